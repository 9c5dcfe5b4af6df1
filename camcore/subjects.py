"""The NATS subject catalogue: every subject the system uses, defined once.

Subjects are built only from validated integers and node names (never from raw user
input), by the builder functions below. docs/subjects.md lists them with publishers,
subscribers and payloads.
"""

from __future__ import annotations

import re
from typing import Final

PREFIX: Final = "cam"

CHAT_QUEUE: Final = "chat"
"""Queue group shared by all chat replicas, so each request is served once."""

PRESENCE_QUEUE: Final = "presence"
"""Queue group shared by all presence replicas."""

VIDEO_QUEUE: Final = "video"
"""Queue group shared by all video-allocator replicas."""

HEALTH_QUEUE: Final = "health"
"""Queue group shared by all health replicas."""

FILES_QUEUE: Final = "files"
"""Queue group shared by all files replicas."""

CHAT_RPC: Final = f"{PREFIX}.chat.rpc"
"""Prefix of chat request/reply subjects: ``cam.chat.rpc.<op>`` (served by chat)."""

CHAT_RPC_ALL: Final = f"{CHAT_RPC}.*"
"""Wildcard the chat service subscribes to, in queue group ``chat``."""

CHAT_OPERATOR: Final = f"{CHAT_RPC}.operator"
"""Prefix of the operator's moderation ops: ``cam.chat.rpc.operator.<op>`` (camctl;
``cam.chat.rpc.*`` does not match them, so edges cannot publish them)."""

CHAT_OPERATOR_ALL: Final = f"{CHAT_OPERATOR}.*"

FILES_RPC: Final = f"{PREFIX}.files.rpc"
"""Prefix of files request/reply subjects: ``cam.files.rpc.<op>`` (served by files)."""

PRESENCE_RPC: Final = f"{PREFIX}.presence.rpc"
"""Prefix of presence request/reply subjects: ``cam.presence.rpc.<op>``."""

PRESENCE_USER_ALL: Final = f"{PREFIX}.presence.user.*"
"""Every user's presence changes (debugging only; edges subscribe per watched user)."""

VIDEO_RPC: Final = f"{PREFIX}.video.rpc"
"""Prefix of video-allocator request/reply subjects: ``cam.video.rpc.<op>``."""

CONF_EVENTS_ALL: Final = f"{PREFIX}.conf.*.ev"
"""Every conference's events (debugging only; edges subscribe per conference)."""

ROOM_EVENTS_ALL: Final = f"{PREFIX}.room.*.ev"
"""Every room's sequenced events (debugging only; edges subscribe per room)."""

USER_EVENTS_ALL: Final = f"{PREFIX}.user.*.ev"
"""Every user's private events (debugging only; edges subscribe per local user)."""

HEARTBEAT_ALL: Final = f"{PREFIX}.hb.>"
"""Heartbeats of every process: ``cam.hb.<kind>.<instance>`` (health subscribes)."""

HEALTH_CLUSTER: Final = f"{PREFIX}.health.rpc.cluster"
"""Request/reply: the cluster view kept by the health service."""

_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def _token(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


def files_rpc(op: str) -> str:
    """``cam.files.rpc.<op>``: a files command, served by one files replica."""
    return f"{FILES_RPC}.{_token(op)}"


def chat_rpc(op: str) -> str:
    """``cam.chat.rpc.<op>``: a chat command, served by one chat replica."""
    return f"{CHAT_RPC}.{_token(op)}"


def chat_operator(op: str) -> str:
    """``cam.chat.rpc.operator.<op>``: an operator's moderation op (camctl)."""
    return f"{CHAT_OPERATOR}.{_token(op)}"


def room_events(room_id: int) -> str:
    """``cam.room.<id>.ev``: sequenced events of one room, published after commit."""
    return f"{PREFIX}.room.{int(room_id)}.ev"


def room_all(room_id: int) -> str:
    """``cam.room.<id>.*``: what an edge with a local member of the room subscribes to."""
    return f"{PREFIX}.room.{int(room_id)}.*"


def room_typing(room_id: int) -> str:
    """``cam.room.<id>.typing``: ephemeral typing indicators (best-effort, not stored)."""
    return f"{PREFIX}.room.{int(room_id)}.typing"


def presence_rpc(op: str) -> str:
    """``cam.presence.rpc.<op>``: a presence command, served by one presence replica."""
    return f"{PRESENCE_RPC}.{_token(op)}"


def edge_metrics(node: str) -> str:
    """``cam.edge.<node>.metrics``: a worker of edge ``node`` gathers its siblings'
    Prometheus expositions (cam_edge.workers); each answers on the inbox."""
    return f"{PREFIX}.edge.{_token(node)}.metrics"


def presence_user(user_id: int) -> str:
    """``cam.presence.user.<id>``: a user's shown status changed (published once)."""
    return f"{PREFIX}.presence.user.{int(user_id)}"


def video_rpc(op: str) -> str:
    """``cam.video.rpc.<op>``: a conference command, served by one allocator replica."""
    return f"{VIDEO_RPC}.{_token(op)}"


def conf_events(room_id: int) -> str:
    """``cam.conf.<room>.ev``: from the video allocator, participants joined/left, moves."""
    return f"{PREFIX}.conf.{int(room_id)}.ev"


def conf_signal(room_id: int) -> str:
    """``cam.conf.<room>.signal``: from edges, signalling relayed between participants."""
    return f"{PREFIX}.conf.{int(room_id)}.signal"


def conf_all(room_id: int) -> str:
    """``cam.conf.<room>.*``: what an edge with a participant in the conference subscribes to."""
    return f"{PREFIX}.conf.{int(room_id)}.*"


def user_events(user_id: int) -> str:
    """``cam.user.<id>.ev``: events for one user's sessions from chat (added to a room)."""
    return f"{PREFIX}.user.{int(user_id)}.ev"


def user_session(user_id: int) -> str:
    """``cam.user.<id>.session``: from edges, a session of the user was revoked."""
    return f"{PREFIX}.user.{int(user_id)}.session"


def user_all(user_id: int) -> str:
    """``cam.user.<id>.*``: what an edge with a session of the user subscribes to."""
    return f"{PREFIX}.user.{int(user_id)}.*"


def heartbeat(kind: str, instance: str) -> str:
    """``cam.hb.<kind>.<instance>``: liveness and load of one process."""
    return f"{PREFIX}.hb.{_token(kind)}.{_token(instance)}"
