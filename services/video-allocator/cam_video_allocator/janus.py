"""A small client of the Janus HTTP API and its VideoRoom plugin.

One Janus session and plugin handle per server, made on first use and remade when
Janus forgets them (sessions expire after 60 s without a request; the health probe
keeps them in use).

The allocator asks every server something each round (a few requests a second for
ever), so requests are logged at DEBUG only; httpx's own per-request INFO lines are
silenced by the allocator's entry point.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import httpx

from camcore import errors
from camcore.errors import CamError

log = logging.getLogger(__name__)

PLUGIN = "janus.plugin.videoroom"
#: Conference rooms this service made carry this in their description.
ROOM_TAG = "cam-conference"


class JanusError(CamError):
    """Janus refused a request or could not be reached."""

    code = errors.UNAVAILABLE

    def __init__(self, message: str) -> None:
        super().__init__(message)


class Janus:
    def __init__(self, url: str, *, admin_key: str = "", timeout: float = 3.0) -> None:
        self.url = url.rstrip("/")
        self.admin_key = admin_key
        self._http = httpx.AsyncClient(timeout=timeout)
        self._session: int | None = None
        self._handle: int | None = None

    async def close(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": secrets.token_hex(6)}
        try:
            r = await self._http.post(self.url + path, json=body)
            data: dict[str, Any] = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise JanusError(f"{self.url}: {exc.__class__.__name__}: {exc}") from None
        log.debug("janus %s%s %s: %s %s", self.url, path, body.get("janus"), r.status_code,
                  data.get("janus"))
        if data.get("janus") == "error":
            err = data.get("error", {})
            raise JanusError(f"{self.url}: janus error {err.get('code')}: {err.get('reason')}")
        return data

    async def info(self) -> dict[str, Any]:
        try:
            r = await self._http.get(self.url + "/info")
            return r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise JanusError(f"{self.url}: {exc}") from None

    async def _ensure_handle(self) -> tuple[int, int]:
        if self._session is None or self._handle is None:
            session = (await self._post("", {"janus": "create"}))["data"]["id"]
            handle = (await self._post(f"/{session}", {"janus": "attach", "plugin": PLUGIN}))
            self._session, self._handle = session, handle["data"]["id"]
        return self._session, self._handle

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous VideoRoom request; returns the plugin's data."""
        for attempt in (1, 2):
            session, handle = await self._ensure_handle()
            try:
                reply = await self._post(f"/{session}/{handle}", {"janus": "message", "body": body})
            except JanusError as exc:
                if attempt == 1 and ("458" in str(exc) or "459" in str(exc)):
                    self._session = self._handle = None  # session expired: make a new one
                    continue
                raise
            data: dict[str, Any] = reply.get("plugindata", {}).get("data", {})
            if data.get("videoroom") == "event" and "error" in data:
                raise JanusError(f"{self.url}: videoroom error {data.get('error_code')}: "
                                 f"{data['error']}")
            return data
        raise JanusError(f"{self.url}: no session")

    async def create_room(self, room: int, pin: str, description: str,
                          publishers: int = 100) -> None:
        body: dict[str, Any] = {"request": "create", "room": room, "pin": pin,
                                "description": f"{ROOM_TAG} {description}"[:120],
                                "publishers": publishers,
                                # Private rooms are listed only to holders of the admin key.
                                "is_private": bool(self.admin_key)}
        if self.admin_key:
            body["admin_key"] = self.admin_key
        try:
            await self.request(body)
        except JanusError as exc:
            if "427" not in str(exc):  # 427: room already exists, which is what we want
                raise

    async def destroy_room(self, room: int) -> None:
        try:
            await self.request({"request": "destroy", "room": room})
        except JanusError as exc:
            if "426" not in str(exc):  # 426: no such room, already gone
                raise

    async def rooms(self) -> dict[int, dict[str, Any]]:
        """Every room on this server, by id (with num_participants and description)."""
        body: dict[str, Any] = {"request": "list"}
        if self.admin_key:
            body["admin_key"] = self.admin_key
        data = await self.request(body)
        return {int(r["room"]): r for r in data.get("list", [])}

    async def participants(self, room: int) -> list[dict[str, Any]]:
        data = await self.request({"request": "listparticipants", "room": room})
        return list(data.get("participants", []))
