"""Wire schemas: client frames (WebSocket JSON) and bus payloads (NATS JSON).

Client frames are decoded in two steps: raw JSON to a dict (so a malformed frame and
an unknown op get their own error codes), then ``msgspec.convert`` to the op's struct,
which validates types and limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

RoomId = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
UserName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
RoomName = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
ClientMsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
RequestId = str | int | None
Seq = Annotated[int, msgspec.Meta(ge=0)]
PageLimit = Annotated[int, msgspec.Meta(ge=1, le=200)]
ROOMS_PAGE_MAX: Final = 5000
"""Most rooms in one ``rooms`` / ``list_rooms`` page (fewer when the byte budget is hit)."""
RoomPageLimit = Annotated[int, msgspec.Meta(ge=1, le=ROOMS_PAGE_MAX)]

MAX_NAMES: Final = 100
MAX_BLOCKS: Final = 1000
"""Most users one user may block (so ``blocks`` answers in one small reply)."""

PAGE_BYTES: Final = 512 * 1024
"""Byte budget of one page of a bus reply (history, room list): well under the bus
payload limit (NATS: 1 MiB), so a page of the largest messages still travels."""

encode = msgspec.json.Encoder().encode
_decoder = msgspec.json.Decoder()


def decode(data: bytes | str) -> Any:
    """Raw JSON to builtins; raises msgspec.DecodeError on malformed input."""
    return _decoder.decode(data)


T = TypeVar("T")


def bounded_page(items: Sequence[T], budget: int = PAGE_BYTES, *,
                 from_end: bool = False) -> tuple[list[T], bool]:
    """The longest run of ``items`` whose JSON list fits in ``budget`` bytes, and
    whether it was cut short.

    The run starts at the first item, or ends at the last one with ``from_end`` (the
    newest messages of a backward history page). It always holds at least one item,
    so paging makes progress however large a single item is.
    """
    order = range(len(items) - 1, -1, -1) if from_end else range(len(items))
    size = 2  # the brackets
    taken = 0
    for i in order:
        size += len(encode(items[i])) + (1 if taken else 0)  # the comma before it
        if taken and size > budget:
            break
        taken += 1
    kept = list(items[len(items) - taken:]) if from_end else list(items[:taken])
    return kept, taken < len(items)


# ---------------------------------------------------------------- client -> edge


class Frame(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="op"):
    """Base of every client frame: an op (the tag) and an optional request id."""

    id: RequestId = None


class Auth(Frame, tag="auth"):
    token: str | None = None
    v: int = 1
    #: room id (as a string: JSON keys) -> last seq the client has; see docs/protocol.md.
    resume: Annotated[dict[str, Seq], msgspec.Meta(max_length=10_000)] | None = None


class Ping(Frame, tag="ping"):
    pass


class ListRoomsFrame(Frame, tag="rooms"):
    after: Annotated[int, msgspec.Meta(ge=0, le=2**62)] = 0
    """The ``next`` of the previous page; 0 for the first."""
    limit: RoomPageLimit | None = None
    """None: as many as fit in one page (``PAGE_BYTES``)."""


class CreateRoomFrame(Frame, tag="create_room"):
    name: RoomName
    members: Annotated[list[UserName], msgspec.Meta(max_length=MAX_NAMES)] = []


class OpenDirectFrame(Frame, tag="open_direct"):
    user: UserName


class InviteFrame(Frame, tag="invite"):
    room: RoomId
    users: Annotated[list[UserName], msgspec.Meta(min_length=1, max_length=MAX_NAMES)]


class SendFrame(Frame, tag="send"):
    room: RoomId
    cid: ClientMsgId
    body: str


class HistoryFrame(Frame, tag="history"):
    room: RoomId
    before: Seq | None = None
    after: Seq | None = None
    limit: PageLimit = 50


class MembersFrame(Frame, tag="members"):
    room: RoomId


class SubscribeFrame(Frame, tag="subscribe"):
    room: RoomId
    since: Seq | None = None


ReadSeq = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class MarkReadFrame(Frame, tag="mark_read"):
    """The user has read ``room`` up to ``seq`` (the marker only moves forward)."""

    room: RoomId
    seq: ReadSeq


Status = Literal["online", "away", "busy", "invisible"]
UserIds = Annotated[list[Annotated[int, msgspec.Meta(ge=1)]], msgspec.Meta(max_length=5000)]


class SetStatusFrame(Frame, tag="set_status"):
    status: Status


class WatchFrame(Frame, tag="watch"):
    users: UserIds


class UnwatchFrame(Frame, tag="unwatch"):
    users: UserIds


DirectoryQuery = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
"""Text a user name or display name must contain (case-insensitive) to be listed."""


class DirectoryFrame(Frame, tag="directory"):
    after: int = 0
    limit: PageLimit = 100
    query: DirectoryQuery | None = None


class TypingFrame(Frame, tag="typing"):
    room: RoomId


class LeaveFrame(Frame, tag="leave"):
    room: RoomId


class BlockFrame(Frame, tag="block"):
    user: UserName


class UnblockFrame(Frame, tag="unblock"):
    user: UserName


class BlocksFrame(Frame, tag="blocks"):
    pass


class AdminRemoveMemberFrame(Frame, tag="admin_remove_member"):
    room: RoomId
    user: UserName


class AdminDeleteRoomFrame(Frame, tag="admin_delete_room"):
    room: RoomId


class AdminDeleteMessageFrame(Frame, tag="admin_delete_message"):
    room: RoomId
    seq: Annotated[int, msgspec.Meta(ge=1, le=2**62)]


class AdminRevokeSessionsFrame(Frame, tag="admin_revoke_sessions"):
    """Log a user out everywhere (handled by the edge, which reads ``is_admin`` itself)."""

    user: UserName


class ConfJoinFrame(Frame, tag="conf_join"):
    room: RoomId


class ConfLeaveFrame(Frame, tag="conf_leave"):
    room: RoomId


class ConfParticipantsFrame(Frame, tag="conf_participants"):
    room: RoomId


class ConfExplainFrame(Frame, tag="conf_explain"):
    room: RoomId


class ConfSignalFrame(Frame, tag="conf_signal"):
    """A WebRTC signalling message (offer, answer, candidate...) for one participant."""

    room: RoomId
    to: Annotated[int, msgspec.Meta(ge=1)]
    data: dict[str, Any]


LINK_TTL_DEFAULT: Final = 86_400
"""Seconds a meeting link works for when ``conf_link_create`` names no ``ttl`` (a day)."""
LINK_TTL_MIN: Final = 300
LINK_TTL_MAX: Final = 604_800
"""A week: a link is for a meeting, not a standing invitation."""
LINK_GUESTS_DEFAULT: Final = 20
LINK_GUESTS_MAX: Final = 100
"""Most guests one link lets in (each redemption makes a guest user)."""
LINKS_PER_ROOM: Final = 20
"""Most live (not revoked, not expired) meeting links of one room."""
LinkTtl = Annotated[int, msgspec.Meta(ge=LINK_TTL_MIN, le=LINK_TTL_MAX)]
LinkGuests = Annotated[int, msgspec.Meta(ge=1, le=LINK_GUESTS_MAX)]
LinkId = Annotated[int, msgspec.Meta(ge=1, le=2**62)]


class ConfLinkCreateFrame(Frame, tag="conf_link_create"):
    """A meeting link to the room's conference, for guests without an account."""

    room: RoomId
    ttl: LinkTtl = LINK_TTL_DEFAULT
    max_guests: LinkGuests = LINK_GUESTS_DEFAULT


class ConfLinksFrame(Frame, tag="conf_links"):
    room: RoomId


class ConfLinkRevokeFrame(Frame, tag="conf_link_revoke"):
    room: RoomId
    link: LinkId


CLIENT_FRAMES: Final[dict[str, type[Frame]]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Auth,
        Ping,
        ListRoomsFrame,
        CreateRoomFrame,
        OpenDirectFrame,
        InviteFrame,
        SendFrame,
        HistoryFrame,
        MembersFrame,
        SubscribeFrame,
        MarkReadFrame,
        SetStatusFrame,
        WatchFrame,
        UnwatchFrame,
        DirectoryFrame,
        TypingFrame,
        LeaveFrame,
        BlockFrame,
        UnblockFrame,
        BlocksFrame,
        AdminRemoveMemberFrame,
        AdminDeleteRoomFrame,
        AdminDeleteMessageFrame,
        AdminRevokeSessionsFrame,
        ConfJoinFrame,
        ConfLeaveFrame,
        ConfParticipantsFrame,
        ConfExplainFrame,
        ConfSignalFrame,
        ConfLinkCreateFrame,
        ConfLinksFrame,
        ConfLinkRevokeFrame,
    )
}


# ---------------------------------------------------------------- edge -> chat (bus)


class ChatRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of chat commands; ``user_id`` is the authenticated caller, set by the edge."""

    user_id: int


class CreateRoom(ChatRequest):
    name: RoomName
    members: list[UserName] = []


class OpenDirect(ChatRequest):
    peer: UserName


class Invite(ChatRequest):
    room: RoomId
    users: list[UserName]


class ListRooms(ChatRequest):
    """One page of the caller's rooms by id: those after ``after`` (a room id, 0 for
    the first page), at most ``limit`` (None: ``ROOMS_PAGE_MAX``) and ``PAGE_BYTES``."""

    after: Annotated[int, msgspec.Meta(ge=0, le=2**62)] = 0
    limit: RoomPageLimit | None = None


class SendMessage(ChatRequest):
    room: RoomId
    cid: ClientMsgId
    body: str


FileId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{22}$")]


class SendFile(ChatRequest):
    """The message of kind ``file`` for a committed upload (sent by the edge that took
    the upload, never by a client frame)."""

    room: RoomId
    cid: ClientMsgId
    file_id: FileId


class History(ChatRequest):
    room: RoomId
    before: Seq | None = None
    after: Seq | None = None
    limit: PageLimit = 50


class Members(ChatRequest):
    room: RoomId


class RoomInfo(ChatRequest):
    room: RoomId


class MarkRead(ChatRequest):
    room: RoomId
    seq: ReadSeq


class Leave(ChatRequest):
    room: RoomId


class Block(ChatRequest):
    user: UserName


class Unblock(ChatRequest):
    user: UserName


class Blocks(ChatRequest):
    pass


class AdminRemoveMember(ChatRequest):
    """Admin ops: the chat service checks ``users.is_admin`` of ``user_id`` itself."""

    room: RoomId
    user: UserName


class AdminDeleteRoom(ChatRequest):
    room: RoomId


class AdminDeleteMessage(ChatRequest):
    room: RoomId
    seq: Annotated[int, msgspec.Meta(ge=1, le=2**62)]


class OperatorRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of ``cam.chat.rpc.operator.<op>``: the moderation ops of ``camctl``. Only the
    operator credential may publish that subject (``camcore.permissions``), so there is
    no user to check; ``os_user`` is who ran camctl, for the audit log."""

    os_user: Annotated[str, msgspec.Meta(max_length=64)] = ""


class OperatorRemoveMember(OperatorRequest):
    room: RoomId
    user: UserName


class OperatorDeleteRoom(OperatorRequest):
    room: RoomId


class ConfLinkCreate(ChatRequest):
    """Meeting links: the chat service checks membership, and for a revocation the
    link's creator, the room's creator or ``users.is_admin``."""

    room: RoomId
    ttl: LinkTtl = LINK_TTL_DEFAULT
    max_guests: LinkGuests = LINK_GUESTS_DEFAULT


class ConfLinks(ChatRequest):
    room: RoomId


class ConfLinkRevoke(ChatRequest):
    room: RoomId
    link: LinkId


GUEST_SESSIONS: Final = "guest_sessions"
"""Key of the ``[user id, session fingerprint]`` pairs a chat reply (``conf_link_revoke``,
``admin_delete_room``) hands the edge: the guest sessions it deleted, whose sockets the
edge closes on every node (chat may not publish ``cam.user.<id>.session``). The edge
takes it out of the answer to the client."""


class RoomHeads(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An edge asking the last seq of the rooms it delivers (no user data returned)."""

    rooms: Annotated[list[int], msgspec.Meta(max_length=100_000)]


#: Chat op name (the last subject token) -> request struct.
CHAT_OPS: Final[dict[str, type[msgspec.Struct]]] = {
    "create_room": CreateRoom,
    "open_direct": OpenDirect,
    "invite": Invite,
    "list_rooms": ListRooms,
    "send": SendMessage,
    "history": History,
    "members": Members,
    "room_info": RoomInfo,
    "mark_read": MarkRead,
    "room_heads": RoomHeads,
    "leave": Leave,
    "block": Block,
    "unblock": Unblock,
    "blocks": Blocks,
    "admin_remove_member": AdminRemoveMember,
    "admin_delete_room": AdminDeleteRoom,
    "admin_delete_message": AdminDeleteMessage,
    "conf_link_create": ConfLinkCreate,
    "conf_links": ConfLinks,
    "conf_link_revoke": ConfLinkRevoke,
}


class Empty(msgspec.Struct):
    """A request that carries nothing (e.g. ``cam.health.rpc.cluster``)."""


# ---------------------------------------------------------------- edge -> presence (bus)


class SessionRef(msgspec.Struct, array_like=True):
    """A live session: its random 62-bit id and its user."""

    session: int
    user: int


class NodeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of the requests an edge makes about its own sessions."""

    node: str
    boot_id: str


class PresenceUpdate(NodeRequest, kw_only=True):
    """Sessions added and removed since the last update; ``count`` and ``digest`` are
    the edge's whole session set afterwards, so the service can detect drift."""

    added: list[SessionRef] = []
    removed: list[int] = []
    count: int
    digest: int


class PresenceBeat(NodeRequest):
    count: int
    digest: int


class PresenceSync(NodeRequest):
    """Every session the edge really holds; replaces what the store has for the node."""

    sessions: list[SessionRef]


class NodeDown(NodeRequest):
    pass


class SetStatus(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    user_id: int
    status: Status


class PresenceQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    users: UserIds


class PresenceState(msgspec.Struct, kw_only=True):
    """Payload of ``cam.presence.user.<id>``: the status others see, and its version."""

    user: int
    status: str  # online, away, busy or offline
    version: int


# ---------------------------------------------------------------- edge -> video allocator (bus)


class ConfRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    room: RoomId


class ConfJoin(ConfRequest, kw_only=True):
    user_id: int
    session: int
    node: str


class ConfLeave(ConfRequest, kw_only=True):
    user_id: int
    session: int


class ConfParticipants(ConfRequest):
    pass


class ConfExplain(ConfRequest):
    pass


class VideoAdmin(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Operator commands (``cam.video.rpc.admin``, the operator credential only): drain
    or enable a video server, or read the status of all."""

    action: Literal["drain", "enable", "status"]
    server: str | None = None
    os_user: Annotated[str, msgspec.Meta(max_length=64)] = ""
    """Who ran camctl, for the audit log."""


class VideoAdminAs(VideoAdmin, kw_only=True):
    """The same for an admin of the web app (``cam.video.rpc.admin_as``, from edges):
    the allocator reads ``users.is_admin`` of ``user_id`` itself, and audits the change
    under that user."""

    user_id: int


DIGEST_MOD: Final = 2**62


def session_digest(session_ids: Any) -> int:
    """Order-free fingerprint of a session set (both sides compute the same)."""
    return sum(session_ids) % DIGEST_MOD


# ---------------------------------------------------------------- records


class FileInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An attachment as clients see it (docs/protocol.md, "Files")."""

    id: str
    name: str
    size: int
    type: str
    width: int | None = None  # images only
    height: int | None = None


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One stored room event; the payload of ``cam.room.<id>.ev`` and of history pages."""

    room: int
    seq: int
    cid: str
    sender: int
    sender_name: str
    kind: str  # "text", "system", "file" or "deleted" (an admin deleted it: body is "")
    body: str
    ts: int  # milliseconds since the epoch, commit time
    file: FileInfo | None = None  # kind "file" only


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Envelope of every bus reply: a result, or an error code with a message."""

    ok: bool
    result: Any = None
    code: str | None = None
    message: str | None = None


# ---------------------------------------------------------------- edge -> files


class FilesRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of files commands; ``user_id`` is the authenticated caller, set by the edge."""

    user_id: int


class FilesUsage(FilesRequest):
    pass


class FilesReserve(FilesRequest):
    room: RoomId
    storage: Literal["shared", "local", "s3"]
    node: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    """The edge taking the upload (cam.nodeName)."""
    declared: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """The upload's Content-Length when it sent one (it bounds the file)."""
    holder: Annotated[str, msgspec.Meta(max_length=300)] | None = None


class FilesCommit(FilesRequest):
    file_id: FileId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    content_type: Annotated[str, msgspec.Meta(min_length=3, max_length=127)]
    width: Annotated[int, msgspec.Meta(ge=1)] | None = None
    height: Annotated[int, msgspec.Meta(ge=1)] | None = None
    variants: Annotated[list[Literal["thumb", "preview"]], msgspec.Meta(max_length=2)] = []


class FilesAbort(FilesRequest):
    file_id: FileId


class FilesAbortNode(FilesRequest):
    """An edge starting again: its uploads that were in progress died with it."""

    node: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class FilesLookup(FilesRequest):
    file_id: FileId


class FilesKnown(FilesRequest):
    """Which of these ids have a row (the local store's sweep; user_id 0)."""

    ids: Annotated[list[FileId], msgspec.Meta(max_length=1000)]
