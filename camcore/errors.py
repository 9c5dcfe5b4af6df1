"""Error codes shared by the services, the edge and the client protocol.

A service replies to a failed request with one of these codes and a human message;
the edge forwards the code to the client unchanged. Codes are stable: clients match
on them, so a code is never renamed or reused.
"""

from __future__ import annotations

from typing import Final

BAD_REQUEST: Final = "bad_request"
MALFORMED_FRAME: Final = "malformed_frame"
UNKNOWN_OP: Final = "unknown_op"
UNSUPPORTED_VERSION: Final = "unsupported_version"
MESSAGE_TOO_LARGE: Final = "message_too_large"
UNAUTHENTICATED: Final = "unauthenticated"
BAD_CREDENTIALS: Final = "bad_credentials"
ALREADY_AUTHENTICATED: Final = "already_authenticated"
NOT_A_MEMBER: Final = "not_a_member"
NO_SUCH_USER: Final = "no_such_user"
CONFLICT: Final = "conflict"
VIDEO_FULL: Final = "video_full"
NOT_IN_CONFERENCE: Final = "not_in_conference"
UNAVAILABLE: Final = "unavailable"
INTERNAL: Final = "internal"

#: Every code with the meaning documented in docs/protocol.md.
DESCRIPTIONS: Final[dict[str, str]] = {
    BAD_REQUEST: "the frame is valid JSON but a field is missing, of the wrong type or out of range",
    MALFORMED_FRAME: "the frame is not a JSON object with a string 'op'",
    UNKNOWN_OP: "the op is not part of this protocol version",
    UNSUPPORTED_VERSION: "the client asked for a protocol version this server does not speak",
    MESSAGE_TOO_LARGE: "the message body is longer than cam.maxMessageChars",
    UNAUTHENTICATED: "the op needs an authenticated connection, or the session is invalid",
    BAD_CREDENTIALS: "wrong user name or password",
    ALREADY_AUTHENTICATED: "the connection is already authenticated",
    NOT_A_MEMBER: "the room does not exist or the user is not a member of it",
    NO_SUCH_USER: "a named user does not exist",
    CONFLICT: "the request conflicts with stored state (e.g. a reused client message id)",
    VIDEO_FULL: "no video server can take a new conference (all over capacity, draining or down)",
    NOT_IN_CONFERENCE: "the connection has not joined this room's conference",
    UNAVAILABLE: "a backend (bus or database) is unreachable or did not answer in time; a send "
    "may or may not have been stored: retry it with the same cid (it is stored once)",
    INTERNAL: "an unexpected server error; nothing was stored",
}


class CamError(Exception):
    """Base of every error the project raises on purpose; carries a stable code."""

    code: str = INTERNAL

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RequestError(CamError):
    """A request that cannot be served as asked; the message is safe to show a client."""

    code = BAD_REQUEST


class Unavailable(CamError):
    """A dependency (bus, database, service) did not answer."""

    code = UNAVAILABLE
