"""The files service: the rows of attachments, the uploaders' quotas, and the sweep of
uploads that never finished or were never sent.

The bytes never pass through here: the edge that takes an upload streams them into the
store (``camcore.storage``) between ``reserve`` and ``commit``. What this service
decides is who may upload how much into which room, and who may read which file:

- ``reserve``: the caller is a member of the room, and the upload fits every quota
  (files and bytes per hour, files and bytes in total, uploads at once). The answer is
  a server-made id and the most bytes the upload may have; those bytes are held against
  the quotas until the upload commits or is swept, so parallel uploads cannot pass them.
- ``commit`` / ``abort``: the upload's outcome.
- ``lookup``: a file for a download, only for members of its room, and only once its
  message was sent (or by its uploader); anyone else is told the file does not exist.
- ``known``: which ids still have a row (the sweep of a node's own disk, local mode).

docs/storage.md describes the modes and limits; docs/protocol.md the REST calls.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from camcore import errors, files, storage, wire
from camcore.config import Settings
from camcore.errors import CamError
from camcore.loops import every
from camcore.service import Loop, ReplicaBase

log = logging.getLogger(__name__)

PENDING_TTL = 6 * 3600.0
"""Seconds after which an upload that never committed is swept (an edge killed mid-way)."""
UNSENT_TTL = 3600.0
"""Seconds after which a committed file that no message names is swept."""
SWEEP_INTERVAL = 300.0
NOT_MEMBER = "the room does not exist or you are not a member of it"
NO_FILE = "no such file"


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n} bytes"


class FilesService(ReplicaBase):
    def __init__(self, pool: asyncpg.Pool, nc: NATS, settings: Settings,
                 store: storage.Store | None = None) -> None:
        self.pool = pool
        self.nc = nc
        self.settings = settings
        self.store = store
        self.swept = 0

    def handlers(self) -> dict[str, tuple[type[Any], Any]]:
        return {
            "usage": (wire.FilesUsage, self.usage),
            "reserve": (wire.FilesReserve, self.reserve),
            "commit": (wire.FilesCommit, self.commit),
            "abort": (wire.FilesAbort, self.abort),
            "abort_node": (wire.FilesAbortNode, self.abort_node),
            "lookup": (wire.FilesLookup, self.lookup),
            "known": (wire.FilesKnown, self.known),
        }

    async def start(self) -> None:
        if self.store is None and self.settings.storage in ("shared", "s3"):
            self.store = storage.open_store(self.settings)
            check = getattr(self.store, "check", None)
            if check is not None:
                await check()  # a wrong bucket or key stops the replica with its reason

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    def background(self) -> list[Loop]:
        return [Loop("sweep", every(SWEEP_INTERVAL, self.sweep))]

    def load(self) -> dict[str, float]:
        return {"swept": float(self.swept)}

    # ------------------------------------------------------------------ quotas

    @staticmethod
    async def _usage(conn: asyncpg.Connection, user_id: int) -> asyncpg.Record:
        """Files and bytes of a user, in total and within the last hour; a pending
        upload counts with the bytes it holds."""
        return await conn.fetchrow(
            "SELECT count(*) AS files, coalesce(sum(coalesce(size, reserved)), 0) AS bytes,"
            " count(*) FILTER (WHERE created_at > now() - interval '1 hour') AS hour_files,"
            " coalesce(sum(coalesce(size, reserved))"
            "   FILTER (WHERE created_at > now() - interval '1 hour'), 0) AS hour_bytes,"
            " count(*) FILTER (WHERE state = 'pending') AS pending,"
            " min(created_at) FILTER (WHERE created_at > now() - interval '1 hour')"
            "   AS hour_oldest"
            " FROM files WHERE uploader_id = $1", user_id)

    async def usage(self, req: wire.FilesUsage) -> dict[str, Any]:
        s = self.settings
        row = await self._usage(self.pool, req.user_id)
        return {
            "files": row["files"], "bytes": row["bytes"],
            "hour_files": row["hour_files"], "hour_bytes": row["hour_bytes"],
            "pending": row["pending"],
            "limits": {"max_upload_bytes": s.max_upload_bytes,
                       "storage_bytes": s.user_storage_bytes, "storage_files": s.user_storage_files,
                       "hour_bytes": s.user_upload_bytes_per_hour,
                       "hour_files": s.user_uploads_per_hour,
                       "at_once": s.user_uploads_at_once},
        }

    def _hour_retry(self, oldest: datetime | None) -> int:
        if oldest is None:
            return 60
        left = 3600 - (datetime.now(UTC) - oldest).total_seconds()
        return max(1, math.ceil(left))

    async def reserve(self, req: wire.FilesReserve) -> dict[str, Any]:
        s = self.settings
        async with self.pool.acquire() as conn, conn.transaction():
            # One reservation of a user at a time, cluster-wide: the sums below stay true
            # until this one is inserted.
            await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", req.user_id)
            member = await conn.fetchval(
                "SELECT true FROM room_members rm JOIN rooms r ON r.id = rm.room_id"
                " WHERE rm.room_id = $1 AND rm.user_id = $2 AND r.deleted_at IS NULL",
                req.room, req.user_id)
            if not member:
                raise CamError(NOT_MEMBER, errors.NOT_A_MEMBER)
            used = await self._usage(conn, req.user_id)
            if used["pending"] >= s.user_uploads_at_once:
                raise CamError(f"{used['pending']} uploads are already in progress; the limit "
                               f"is {s.user_uploads_at_once}", errors.QUOTA_EXCEEDED)
            if used["files"] >= s.user_storage_files:
                raise CamError(f"you keep {used['files']} files; the limit is "
                               f"{s.user_storage_files}", errors.QUOTA_EXCEEDED)
            if used["hour_files"] >= s.user_uploads_per_hour:
                raise CamError(f"{used['hour_files']} uploads within the last hour; the "
                               f"limit is {s.user_uploads_per_hour}; retry in "
                               f"{self._hour_retry(used['hour_oldest'])} s", errors.QUOTA_EXCEEDED)
            room_total = s.user_storage_bytes - used["bytes"]
            room_hour = s.user_upload_bytes_per_hour - used["hour_bytes"]
            quota = min(room_total, room_hour)
            limit = min(s.max_upload_bytes, quota, req.declared if req.declared is not None
                        else s.max_upload_bytes)
            if room_total < 1:
                raise CamError(f"{_mib(max(room_total, 0))} of your storage quota is left",
                               errors.QUOTA_EXCEEDED)
            if room_hour < 1:
                raise CamError(f"{_mib(max(room_hour, 0))} of your hourly upload quota is "
                               f"left; retry in {self._hour_retry(used['hour_oldest'])} s",
                               errors.QUOTA_EXCEEDED)
            file_id = files.new_id()
            await conn.execute(
                "INSERT INTO files (id, room_id, uploader_id, name, reserved, storage, holder,"
                " edge_node) VALUES ($1, $2, $3, 'upload', $4, $5, $6, $7)",
                file_id, req.room, req.user_id, limit, req.storage, req.holder, req.node)
        # Which bound the limit is, so a refusal while streaming can say so.
        reason = "quota" if limit == quota and quota < s.max_upload_bytes else "max_upload_bytes"
        return {"file_id": file_id, "limit": limit, "limit_reason": reason}

    async def commit(self, req: wire.FilesCommit) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            "UPDATE files SET state = 'ready', size = $3, sha256 = $4, content_type = $5,"
            " width = $6, height = $7, variants = $8, name = $9, reserved = 0,"
            " committed_at = now()"
            " WHERE id = $1 AND uploader_id = $2 AND state = 'pending' AND $3 <= reserved"
            " RETURNING *",
            req.file_id, req.user_id, req.size, bytes.fromhex(req.sha256), req.content_type,
            req.width, req.height, req.variants, files.clean_name(req.name))
        if row is None:
            raise CamError("the upload is no longer pending (it took too long, or was "
                           "aborted)", errors.NOT_FOUND)
        return {"file": files.info(row)}

    async def abort(self, req: wire.FilesAbort) -> dict[str, Any]:
        status = await self.pool.execute(
            "DELETE FROM files WHERE id = $1 AND uploader_id = $2 AND state = 'pending'",
            req.file_id, req.user_id)
        return {"aborted": status.endswith(" 1")}

    async def abort_node(self, req: wire.FilesAbortNode) -> dict[str, Any]:
        rows = await self.pool.fetch(
            "DELETE FROM files WHERE edge_node = $1 AND state = 'pending' RETURNING id", req.node)
        if rows:
            log.info("%d uploads in progress on %s died with it", len(rows), req.node)
        return {"aborted": [r["id"] for r in rows]}

    async def lookup(self, req: wire.FilesLookup) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            "SELECT f.* FROM files f JOIN rooms r ON r.id = f.room_id"
            " WHERE f.id = $1 AND f.state = 'ready' AND r.deleted_at IS NULL"
            "   AND EXISTS (SELECT 1 FROM room_members rm"
            "               WHERE rm.room_id = f.room_id AND rm.user_id = $2)"
            "   AND (f.uploader_id = $2 OR EXISTS (SELECT 1 FROM messages m"
            "        WHERE m.file_id = f.id AND m.kind = 'file'))",
            req.file_id, req.user_id)
        if row is None:
            # Unknown, not yet sent, deleted, or in a room the caller is not in: the same
            # answer, so a guess learns nothing.
            raise CamError(NO_FILE, errors.NOT_FOUND)
        return {"file": files.info(row), "sha256": row["sha256"].hex(),
                "variants": list(row["variants"]), "storage": row["storage"],
                "holder": row["holder"], "room": row["room_id"]}

    async def known(self, req: wire.FilesKnown) -> dict[str, Any]:
        rows = await self.pool.fetch("SELECT id FROM files WHERE id = ANY($1::text[])", req.ids)
        return {"known": [r["id"] for r in rows]}

    # ------------------------------------------------------------------ sweep

    async def sweep(self) -> None:
        """Delete the rows, and in a shared store the bytes, of uploads that never
        committed, of committed files no message names, and of files whose message an
        admin deleted. (A node's own disk in local mode is swept by its edge, against
        ``known``.)"""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE messages SET file_id = NULL WHERE kind = 'deleted'"
                " AND file_id IS NOT NULL")
            rows = await conn.fetch(
                "DELETE FROM files f WHERE"
                " (f.state = 'pending' AND f.created_at < now() - make_interval(secs => $1))"
                " OR (f.state = 'ready' AND f.committed_at < now() - make_interval(secs => $2)"
                "     AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.file_id = f.id))"
                " RETURNING f.id, f.storage, f.variants",
                PENDING_TTL, UNSENT_TTL)
        if not rows:
            return
        self.swept += len(rows)
        log.info("swept %d attachments that were never finished or sent", len(rows))
        if self.store is None:
            return
        for row in rows:
            if row["storage"] != self.settings.storage:
                continue  # written in another mode: docs/storage.md, "Moving between modes"
            for variant in (None, *row["variants"]):
                try:
                    await self.store.delete(files.variant_key(row["id"], variant))
                except Exception as exc:  # noqa: BLE001 - the row is gone: it is invisible
                    log.warning("could not delete swept file %s: %s", row["id"], exc)
