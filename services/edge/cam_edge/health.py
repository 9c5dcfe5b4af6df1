"""``GET /CAMServer/healthCheck``: 200 ``{"status":200}`` while this node can serve.

The node can serve when its bus connection is up and the database answers. The
database probe result is cached briefly so a load balancer polling every second (or
several of them) costs at most a couple of ``SELECT 1`` per second.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from .context import Edge

OK_BODY = b'{"status":200}'
_CACHE_SECONDS = 0.5
_DB_TIMEOUT = 1.0


class HealthProbe:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self._db_ok = False
        self._checked = 0.0
        self._lock = asyncio.Lock()

    async def db_ok(self) -> bool:
        async with self._lock:
            if time.monotonic() - self._checked > _CACHE_SECONDS:
                try:
                    await asyncio.wait_for(self.edge.pool.fetchval("SELECT 1"), _DB_TIMEOUT)
                    self._db_ok = True
                except Exception:  # noqa: BLE001 - any failure means "cannot serve"
                    self._db_ok = False
                self._checked = time.monotonic()
            return self._db_ok

    async def status(self) -> tuple[int, str]:
        if self.edge.draining:
            return 503, "draining"
        if not self.edge.nc.is_connected:
            return 503, "bus unavailable"
        if not await self.db_ok():
            return 503, "database unavailable"
        return 200, "ok"

    async def endpoint(self, request: Request) -> Response:
        code, reason = await self.status()
        if code == 200:
            return Response(OK_BODY, media_type="application/json",
                            headers={"Cache-Control": "no-store"})
        body = f'{{"status":{code},"reason":"{reason}"}}'.encode()
        return Response(body, status_code=code, media_type="application/json",
                        headers={"Cache-Control": "no-store"})
