"""Who may publish and subscribe to what on the bus: one credential per kind of process.

This is the one place that answers "who can publish this subject?". Each kind of
process connects with its own NATS user (``cam.natsCredentials``); the NATS servers
are configured from :data:`PERMISSIONS` (``nats_authorization``), so a process that
has no business sending a subject is refused by the server itself, whatever it tries:

- only chat replicas publish room events and ``room_added``;
- only presence replicas publish presence changes;
- only video allocators publish conference membership and moves;
- files replicas publish nothing but their heartbeats;
- backups replicas publish their heartbeats (with the backup age and the WAL archive
  lag) and listen to nothing;
- edges make the requests they need (chat, presence, files and video, but neither
  ``cam.video.rpc.admin`` nor ``cam.chat.rpc.operator.*``, the operator's moderation
  subjects, which carry no user to check) and publish only what they own: typing, ``session_revoked``,
  conference signalling and their heartbeats; the workers of one edge answer each
  other's gathering of metrics (``cam.edge.<node>.metrics``);
- services answer requests they received (``allow_responses``) and nothing else;
- the ``operator`` credential (``camctl``, readiness probes) may do everything,
  admin subjects included.

Each credential reads replies only on its own inbox prefix (``_INBOX.<kind>.>``), so
one process cannot read the answers meant for another kind.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from . import subjects as s
from .errors import CamError


@dataclass(frozen=True)
class Permission:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responds: bool = False  # may publish replies to the requests it receives


def _inbox(kind: str) -> str:
    return f"_INBOX.{kind}.>"


def inbox_prefix(kind: str) -> str:
    """The reply inbox prefix a process of ``kind`` uses (see :func:`_inbox`)."""
    return f"_INBOX.{kind}"


PERMISSIONS: Final[dict[str, Permission]] = {
    "edge": Permission(
        publish=(f"{s.CHAT_RPC}.*", f"{s.PRESENCE_RPC}.*", f"{s.FILES_RPC}.*",
                 *(f"{s.VIDEO_RPC}.{op}"
                   for op in ("join", "leave", "participants", "explain", "admin_as")),
                 s.HEALTH_CLUSTER, "cam.room.*.typing", "cam.user.*.session", "cam.conf.*.signal",
                 "cam.hb.edge.*", "cam.edge.*.metrics"),
        subscribe=("cam.room.*.*", "cam.user.*.*", "cam.presence.user.*", "cam.conf.*.*",
                   "cam.edge.*.metrics", _inbox("edge")),
        # A worker answers its siblings' gathering of metrics (cam_edge.workers).
        responds=True),
    "chat": Permission(
        publish=("cam.room.*.ev", "cam.user.*.ev", "cam.hb.chat.*"),
        subscribe=(s.CHAT_RPC_ALL, s.CHAT_OPERATOR_ALL, _inbox("chat")), responds=True),
    "files": Permission(
        publish=("cam.hb.files.*",),
        subscribe=(f"{s.FILES_RPC}.*", _inbox("files")), responds=True),
    "backups": Permission(publish=("cam.hb.backups.*",), subscribe=(_inbox("backups"),)),
    "presence": Permission(
        publish=("cam.presence.user.*", "cam.hb.presence.*"),
        subscribe=(f"{s.PRESENCE_RPC}.*", _inbox("presence")), responds=True),
    "video": Permission(
        publish=("cam.conf.*.ev", "cam.hb.video.*"),
        subscribe=(f"{s.VIDEO_RPC}.*", _inbox("video")), responds=True),
    "health": Permission(
        publish=("cam.hb.health.*",),
        subscribe=(s.HEARTBEAT_ALL, s.HEALTH_CLUSTER, _inbox("health")), responds=True),
    "operator": Permission(publish=(">",), subscribe=(">",)),
}
"""Process kind -> what its credential may publish and subscribe to."""

ROUTE_USER: Final = "route"
"""The user NATS servers authenticate each other's cluster routes with."""


class CredentialError(CamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "bad_config")


@dataclass(frozen=True)
class Credential:
    """One NATS user: the name, the password, and the inbox prefix of its kind."""

    user: str
    password: str
    kind: str = field(default="")

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.kind or self.user)


def read_credential(path: str | os.PathLike[str]) -> Credential:
    """A credentials file: one JSON object ``{"user", "password", "kind"}``, mode 0600."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return Credential(str(data["user"]), str(data["password"]), str(data.get("kind", "")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CredentialError(f"cannot read NATS credentials from {p}: {exc}") from None


def ensure_credentials(directory: Path) -> dict[str, Credential]:
    """The credential of every kind (and of routes), made on first use in ``directory``
    with mode 0600 and kept across restarts."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    out: dict[str, Credential] = {}
    for kind in (*PERMISSIONS, ROUTE_USER):
        path = directory / f"{kind}.json"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"user": kind, "password": secrets.token_urlsafe(24),
                                       "kind": kind}), encoding="utf-8")
            tmp.chmod(0o600)
            tmp.replace(path)
        out[kind] = read_credential(path)
    return out


def hash_password(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()


def nats_authorization(creds: Mapping[str, Credential]) -> str:
    """The ``authorization`` block of a nats-server config for ``creds`` (bcrypt hashes)."""
    users = []
    for kind, perm in PERMISSIONS.items():
        cred = creds[kind]
        block = {
            "user": cred.user,
            "password": hash_password(cred.password),
            "permissions": {
                "publish": {"allow": list(perm.publish)},
                "subscribe": {"allow": list(perm.subscribe)},
                **({"allow_responses": True} if perm.responds else {}),
            },
        }
        users.append(block)
    # nats-server reads JSON as a subset of its config language.
    return "authorization: " + json.dumps({"users": users}, indent=2)
