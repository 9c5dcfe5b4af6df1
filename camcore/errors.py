"""Error codes, the exceptions that carry them, and the one table that maps errors to codes.

A service replies to a failed request with one of these codes and a human message;
the edge forwards the code to the client unchanged. Codes are stable: clients match
on them, so a code is never renamed or reused.

Every error the project raises on purpose is a ``CamError`` (the root of the shared
package and of the services; e.g. ``cam_video_allocator.janus.JanusError``). The one
exception is ``camcore.config.ConfigError``: it only ever happens at start-up, before
anything is served, and stops the process with one line (exit 2); it never reaches a
client, so it has no code.

``failure(exc)`` is the mapping table used by the edge's WebSocket ops, its REST routes
and every bus reply (``camcore.bus.RpcServer``): a ``CamError`` keeps its own code and
message, library errors that mean "a backend is down" become ``unavailable``, and
anything else is ``internal`` (a bug: logged with its traceback, never shown).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, NamedTuple

import nats.errors

from .db import UNAVAILABLE_ERRORS

BAD_REQUEST: Final = "bad_request"
MALFORMED_FRAME: Final = "malformed_frame"
UNKNOWN_OP: Final = "unknown_op"
UNSUPPORTED_VERSION: Final = "unsupported_version"
MESSAGE_TOO_LARGE: Final = "message_too_large"
UNAUTHENTICATED: Final = "unauthenticated"
BAD_CREDENTIALS: Final = "bad_credentials"
ACCOUNT_DEACTIVATED: Final = "account_deactivated"
ALREADY_AUTHENTICATED: Final = "already_authenticated"
NOT_A_MEMBER: Final = "not_a_member"
NO_SUCH_USER: Final = "no_such_user"
NOT_FOUND: Final = "not_found"
CONFLICT: Final = "conflict"
VIDEO_FULL: Final = "video_full"
NOT_IN_CONFERENCE: Final = "not_in_conference"
UNAVAILABLE: Final = "unavailable"
TOO_LARGE: Final = "too_large"
INTERNAL: Final = "internal"
# REST only: refusals of the edge's HTTP surface (services/edge/cam_edge/limits.py).
FORBIDDEN: Final = "forbidden"
REQUEST_TIMEOUT: Final = "request_timeout"
REQUEST_TOO_LARGE: Final = "request_too_large"
UNSUPPORTED_MEDIA_TYPE: Final = "unsupported_media_type"
RATE_LIMITED: Final = "rate_limited"
LIMIT_REACHED: Final = "limit_reached"
FILE_TOO_LARGE: Final = "file_too_large"
QUOTA_EXCEEDED: Final = "quota_exceeded"
BAD_IMAGE: Final = "bad_image"
RANGE_NOT_SATISFIABLE: Final = "range_not_satisfiable"


class Code(NamedTuple):
    """What a code means (docs/protocol.md) and the HTTP status of a REST answer with it."""

    http_status: int
    description: str


#: Every code, with its HTTP status and the meaning documented in docs/protocol.md.
CODES: Final[dict[str, Code]] = {
    BAD_REQUEST: Code(400, "the frame is valid JSON but a field is missing, of the wrong type "
                           "or out of range"),
    MALFORMED_FRAME: Code(400, "the frame is not a JSON object with a string 'op'"),
    UNKNOWN_OP: Code(400, "the op is not part of this protocol version"),
    UNSUPPORTED_VERSION: Code(400, "the client asked for a protocol version this server does "
                                   "not speak"),
    MESSAGE_TOO_LARGE: Code(400, "the message body is longer than cam.maxMessageChars"),
    UNAUTHENTICATED: Code(401, "the op needs an authenticated connection, or the session is "
                               "invalid"),
    BAD_CREDENTIALS: Code(401, "wrong user name or password"),
    ACCOUNT_DEACTIVATED: Code(403, "the password is right but an administrator deactivated "
                                   "the account"),
    ALREADY_AUTHENTICATED: Code(400, "the connection is already authenticated"),
    NOT_A_MEMBER: Code(400, "the room does not exist or the user is not a member of it"),
    NO_SUCH_USER: Code(400, "a named user does not exist"),
    NOT_FOUND: Code(404, "the named thing does not exist (a meeting link), or no longer "
                         "works (expired or revoked)"),
    CONFLICT: Code(409, "the request conflicts with stored state (e.g. a reused client "
                        "message id)"),
    VIDEO_FULL: Code(400, "no video server can take a new conference (all over capacity, "
                          "draining or down)"),
    NOT_IN_CONFERENCE: Code(400, "the connection has not joined this room's conference"),
    UNAVAILABLE: Code(503, "a backend (bus or database) is unreachable or did not answer in "
                           "time; a send may or may not have been stored: retry it with the "
                           "same cid (it is stored once)"),
    TOO_LARGE: Code(413, "the answer would exceed the bus payload limit (1 MiB); paged answers "
                         "never should"),
    INTERNAL: Code(500, "an unexpected server error; nothing was stored"),
    FORBIDDEN: Code(403, "not allowed: an admin op or the cluster view without admin rights, "
                         "an Origin that may not call the API, a user who blocked the "
                         "caller, or an op a guest may not use"),
    REQUEST_TIMEOUT: Code(408, "the request body did not arrive in time"),
    REQUEST_TOO_LARGE: Code(413, "the request body is over cam.maxRequestBytes"),
    UNSUPPORTED_MEDIA_TYPE: Code(415, "the request body is not application/json"),
    RATE_LIMITED: Code(429, "too many requests (logins, ops per connection, rooms per hour); "
                            "retry after Retry-After (REST) or retry_after (ops) seconds"),
    LIMIT_REACHED: Code(409, "a configured bound is reached (members per room, watched "
                             "users, meeting links per room, guests per link); the request "
                             "was not carried out"),
    FILE_TOO_LARGE: Code(413, "the upload is over cam.maxUploadBytes (refused while it "
                              "streamed; nothing was kept)"),
    QUOTA_EXCEEDED: Code(429, "the upload would pass one of the user's quotas (bytes or "
                              "files per hour, in total, or uploads at once); for the "
                              "hourly ones the message says in how many seconds to retry"),
    BAD_IMAGE: Code(422, "the upload claims to be an image (name or type) but is not a "
                         "PNG, JPEG, GIF or WebP that can be decoded within "
                         "cam.imageMaxPixels; nothing was kept"),
    RANGE_NOT_SATISFIABLE: Code(416, "the Range header asks for bytes past the end of the "
                                     "file"),
}

#: Every code with the meaning documented in docs/protocol.md.
DESCRIPTIONS: Final[dict[str, str]] = {code: c.description for code, c in CODES.items()}


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


#: Errors of the NATS client that mean "the bus cannot be used right now".
BUS_UNAVAILABLE_ERRORS: Final[tuple[type[BaseException], ...]] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.TimeoutError,
)

#: Errors that are not CamErrors, matched in this order: the classes, then the code and
#: message a caller gets. Bus errors come first: nats' TimeoutError is also a TimeoutError.
FOREIGN_ERRORS: Final[tuple[tuple[tuple[type[BaseException], ...], str, str], ...]] = (
    (BUS_UNAVAILABLE_ERRORS, UNAVAILABLE, "the message bus is unavailable; retry later"),
    (UNAVAILABLE_ERRORS, UNAVAILABLE, "database unavailable; retry later"),
)


@dataclass(frozen=True, slots=True)
class Failure:
    """What a caller is told about an error: a stable code and a message safe to show."""

    code: str
    message: str
    expected: bool
    """False for a bug (``internal``): it is logged with its traceback."""

    @property
    def http_status(self) -> int:
        return CODES[self.code].http_status if self.code in CODES else 400


def failure(exc: BaseException) -> Failure:
    """The code and message for ``exc``: the one mapping table of the project."""
    if isinstance(exc, CamError):
        return Failure(exc.code, exc.message, True)
    for classes, code, message in FOREIGN_ERRORS:
        if isinstance(exc, classes):
            return Failure(code, message, True)
    return Failure(INTERNAL, "internal error", False)


def report(log: logging.Logger, what: str, exc: BaseException) -> Failure:
    """``failure(exc)``, logged as it deserves: a backend outage is a warning, a bug is an
    error with its traceback, and a refused request is not worth a line."""
    result = failure(exc)
    if not result.expected:
        log.error("%s failed", what, exc_info=exc)
    elif not isinstance(exc, CamError):
        log.warning("%s: %s (%s: %s)", what, result.message, type(exc).__name__, exc)
    return result
