"""Where attachments live: a directory (``cam.storage=shared`` or ``local``) or an
S3-compatible bucket (``cam.storage=s3``, ``camcore.s3``).

Every store takes a complete, fsynced temporary file and makes it visible under its key
in one step (a rename, or a finished S3 upload), so a reader never sees half a file.
Keys are server-made (``camcore.files.new_id`` plus a variant suffix); nothing a user
typed is ever part of a path (docs/storage.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .config import Settings

CHUNK: Final = 64 * 1024

_KEY = re.compile(r"^[A-Za-z0-9_-]{8,64}(\.[a-z]{1,12})?$")


class RangeNotSatisfiable(Exception):
    """The Range header asks for bytes the object does not have."""

    def __init__(self, total: int) -> None:
        super().__init__(f"range not satisfiable (object is {total} bytes)")
        self.total = total


@dataclass
class StoredObject:
    """One answer of ``Store.get``: the whole object (200) or one range of it (206)."""

    status: int
    length: int
    total: int
    content_range: str | None
    chunks: AsyncIterator[bytes]


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"not a storage key: {key!r}")
    return key


class Store:
    """The operations every kind of storage provides."""

    async def put(self, key: str, src: Path) -> None:
        """Make the complete, fsynced file ``src`` visible as ``key``; ``src`` is consumed."""
        raise NotImplementedError

    async def exists(self, key: str) -> bool:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is fine."""
        raise NotImplementedError

    async def get(self, key: str, range_header: str | None = None) -> StoredObject:
        """The object, or the single byte range asked for; KeyError when it is missing."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, total: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a single ``bytes=`` range, or None for the
    whole object (no header, several ranges, or one we do not understand: RFC 9110
    lets a server ignore Range). Raises RangeNotSatisfiable for a range past the end."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match:
        return None
    first_s, last_s = match.groups()
    if not first_s and not last_s:
        return None
    if not first_s:  # the last N bytes
        suffix = int(last_s)
        if suffix == 0 or total == 0:
            raise RangeNotSatisfiable(total)
        return max(total - suffix, 0), total - 1
    first = int(first_s)
    last = int(last_s) if last_s else total - 1
    if last_s and last < first:
        return None
    if first >= total:
        raise RangeNotSatisfiable(total)
    return first, min(last, total - 1)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(Store):
    """A directory: ``<root>/files/<first two characters of the id>/<key>``.

    With ``cam.storage=shared`` the root is the mount every node shares; with
    ``cam.storage=local`` it is this node's own disk, and other nodes fetch what they
    lack from the node that holds it (``cam_edge.files``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root / "files"

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key

    async def put(self, key: str, src: Path) -> None:
        dest = self.path(key)

        def move() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)  # same file system: temp files live under the root
            fsync_dir(dest.parent)

        await asyncio.to_thread(move)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path(key).unlink)

    async def get(self, key: str, range_header: str | None = None) -> StoredObject:
        path = self.path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise KeyError(key) from None
        total = os.fstat(handle.fileno()).st_size
        try:
            span = parse_range(range_header, total)
        except RangeNotSatisfiable:
            handle.close()
            raise
        first, last = span if span is not None else (0, total - 1)
        length = last - first + 1 if total else 0

        async def chunks() -> AsyncIterator[bytes]:
            try:
                await asyncio.to_thread(handle.seek, first)
                left = length
                while left > 0:
                    data = await asyncio.to_thread(handle.read, min(CHUNK, left))
                    if not data:
                        break
                    left -= len(data)
                    yield data
            finally:
                handle.close()

        if span is None:
            return StoredObject(200, length, total, None, chunks())
        return StoredObject(206, length, total, f"bytes {first}-{last}/{total}", chunks())

    def temp_dir(self, node: str) -> Path:
        """Where this node writes uploads before they are complete: under the same root,
        so the final rename is atomic, and per node, so a node that starts again may
        clear what it left behind without touching another node's uploads."""
        return self.root / ".tmp" / node


def open_store(settings: Settings) -> Store:
    """The store of ``cam.storage`` (docs/storage.md): cam.serverDatePath for ``shared``
    and ``local``, the bucket for ``s3``."""
    if settings.storage == "s3":
        from .s3 import S3Store

        return S3Store(settings.s3_endpoint, settings.s3_bucket, settings.s3_region,
                       settings.s3_access_key, settings.s3_secret_key)
    return LocalStore(settings.data_root)
