"""Attachments over REST: upload into a room, download by id, and the node-to-node fetch
of ``cam.storage=local`` (docs/storage.md, docs/protocol.md "Files").

An upload is streamed: the multipart body is parsed as it arrives (python-multipart's
push parser, never a hand-written one), its file part written to a temporary file under
the store's root, and the whole request refused with 413 the moment it passes the
limit the files service granted (``cam.maxUploadBytes`` or what is left of a quota).
Only a complete, fsynced file is renamed into place (or uploaded to the bucket), then
committed; a killed edge leaves a temporary file nobody can see, which it deletes when
it starts again, and a pending row that the files service sweeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from camcore import accounts, bus, errors, files, images, protocol, storage, subjects, wire
from camcore.config import HostEntry, Settings
from camcore.errors import CamError

from .context import Edge

log = logging.getLogger(__name__)

UPLOAD_PATH = re.compile(r"^/api/rooms/[0-9]{1,19}/files$")
PEER_AUTH_HEADER = "x-cam-node-auth"
PEER_AUTH_TTL = 60
PEER_TIMEOUT = httpx.Timeout(30.0, connect=3.0)
LOCAL_SWEEP_INTERVAL = 600.0
LOCAL_SWEEP_AGE = 8 * 3600.0
"""A file on a node's own disk that has had no row for this long is deleted (local mode);
longer than the files service keeps pending and unsent rows."""
MAX_PART_HEADER_BYTES = 16 * 1024
"""A part's header line may carry a long file name (cut to 255 characters afterwards)."""
_CID = re.compile(r"^[\x21-\x7e]{1,64}$")
_FILE_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
NO_STORE = {"cache-control": "no-store"}


def is_upload(path: str) -> bool:
    """The upload route: its body is bounded by cam.maxUploadBytes, not cam.maxRequestBytes."""
    return UPLOAD_PATH.match(path) is not None


def request_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(protocol.SESSION_COOKIE)


def server_url(entry: HostEntry) -> str:
    """The server-to-server URL of a cam.clusterHosts entry: HTTP to its port (8080 in
    the spec's deployments), HTTPS when it names 443."""
    scheme = "https" if entry.port == 443 else "http"
    return f"{scheme}://{entry.address}"


def peer_signature(secret: str, key: str, expires: int) -> str:
    mac = hmac.new(secret.encode(), f"cam-file\n{key}\n{expires}".encode(), hashlib.sha256)
    return f"{expires}.{mac.hexdigest()}"


def peer_signature_ok(secret: str, key: str, header: str | None, now: float) -> bool:
    if not secret or not header or "." not in header:
        return False
    expires_s, _, _mac = header.partition(".")
    if not expires_s.isdigit() or int(expires_s) < now or int(expires_s) > now + 2 * PEER_AUTH_TTL:
        return False
    return hmac.compare_digest(peer_signature(secret, key, int(expires_s)), header)


@dataclass
class _Part:
    """The one file part of an upload, as the parser reports it."""

    sink: Any
    limit: int
    limit_reason: str
    headers: dict[bytes, bytes] = field(default_factory=dict)
    field_name: bytes = b""
    header_field: bytes = b""
    header_value: bytes = b""
    name: str | None = None
    declared_type: str | None = None
    parts: int = 0
    in_file: bool = False
    size: int = 0
    head: bytes = b""
    digest: Any = field(default_factory=hashlib.sha256)
    done: bool = False


class FileRoutes:
    """The REST routes of attachments, and the store they read and write."""

    def __init__(self, settings: Settings, edge: Callable[[], Edge], instance: str) -> None:
        self.settings = settings
        self.edge = edge
        self.instance = instance
        """This process's name (a worker's own, cam_edge.workers): its uploads in progress."""
        self.store = storage.open_store(settings)
        self.local = storage.LocalStore(settings.data_root)
        self.temp = self.local.temp_dir(instance)
        self.images = images.ImageWorker(settings.image_max_pixels)
        self.peers = {entry.address: server_url(entry) for entry in settings.cluster_hosts}
        self.own = settings.cluster_hosts[0].address if settings.cluster_hosts else None
        self._fetching: dict[str, asyncio.Future[None]] = {}
        self._client: httpx.AsyncClient | None = None

    # -------------------------------------------------------------- lifetime

    def clear_temp(self) -> int:
        """Delete what an earlier run of this node left half-written (nobody else writes
        here, and nothing here was ever visible)."""
        self.temp.mkdir(parents=True, exist_ok=True, mode=0o700)
        removed = 0
        for leftover in self.temp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        if removed:
            log.info("removed %d unfinished uploads left in %s", removed, self.temp)
        return removed

    async def forget(self, file_ids: list[str]) -> None:
        """Delete whatever reached the store of uploads that died uncommitted."""
        for file_id in file_ids:
            for variant in (None, *files.VARIANTS):
                with contextlib.suppress(Exception):
                    await self.store.delete(files.variant_key(file_id, variant))

    async def close(self) -> None:
        self.images.close()
        if self._client is not None:
            await self._client.aclose()
        await self.store.close()

    # -------------------------------------------------------------- helpers

    async def _user(self, request: Request) -> accounts.User:
        token = request_token(request)
        user = await accounts.resolve_session(self.edge().pool, token) if token else None
        if user is None:
            raise CamError("not logged in", errors.UNAUTHENTICATED)
        return user

    async def _files(self, op: str, req: Any, timeout: float = 5.0) -> Any:
        return await bus.call(self.edge().nc, subjects.files_rpc(op), req, timeout=timeout)

    def _temp_path(self, name: str) -> Path:
        return self.temp / name

    # -------------------------------------------------------------- upload

    async def upload(self, request: Request) -> Response:
        user = await self._user(request)
        if user.is_guest:
            raise CamError("guests cannot share files", errors.FORBIDDEN)
        room = int(request.path_params["room"])
        if not 1 <= room <= 2**62:
            raise CamError("no such room", errors.NOT_A_MEMBER)
        ctype, options = parse_options_header(request.headers.get("content-type"))
        boundary = options.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary or len(boundary) > 200:
            raise CamError("send the file as multipart/form-data with one part named 'file'",
                           errors.UNSUPPORTED_MEDIA_TYPE)
        cid = request.query_params.get("cid")
        if cid is not None and not _CID.match(cid):
            raise CamError("cid must be 1 to 64 printable ASCII characters", errors.BAD_REQUEST)
        length = request.headers.get("content-length")
        declared = int(length) if length and length.isdigit() else None
        if declared is not None and declared > self.settings.max_upload_bytes + 64 * 1024:
            raise _too_large(declared, self.settings.max_upload_bytes)
        reserved = await self._files("reserve", wire.FilesReserve(
            user_id=user.id, room=room, declared=declared,
            storage=self.settings.storage,  # type: ignore[arg-type]
            node=self.instance,
            holder=self.own if self.settings.storage == "local" else None))
        file_id: str = reserved["file_id"]
        written: list[str] = []
        temps = [self._temp_path(f"{file_id}.part"),
                 *(self._temp_path(f"{file_id}.{v}") for v in files.VARIANTS)]
        committed = False
        try:
            part = await self._receive(request, temps[0], reserved)
            name = files.clean_name(part.name)
            mime = files.sniff(part.head)
            made: images.Made | None = None
            if mime in files.IMAGE_TYPES:
                made = await self.images.make(temps[0], dict(zip(files.VARIANTS, temps[1:],
                                                                 strict=True)))
            elif files.claims_image(name, part.declared_type):
                raise images.BadImage(f"{name!r} is not the image it claims to be "
                                      f"(its bytes are {mime})")
            if made is not None:
                for variant, temp in zip(files.VARIANTS, temps[1:], strict=True):
                    if variant in made.variants:
                        await _fsync(temp)
                        await self.store.put(files.variant_key(file_id, variant), temp)
                        written.append(files.variant_key(file_id, variant))
            await self.store.put(file_id, temps[0])
            written.append(file_id)
            done = await self._files("commit", wire.FilesCommit(
                user_id=user.id, file_id=file_id, name=name, size=part.size,
                sha256=part.digest.hexdigest(), content_type=mime,
                width=made.width if made else None, height=made.height if made else None,
                variants=list(made.variants) if made else []))  # type: ignore[arg-type]
            committed = True
            sent = await self.edge().chat("send_file", wire.SendFile(
                user_id=user.id, room=room, cid=cid or f"file:{file_id}", file_id=file_id))
        except BaseException:
            if not committed:
                await self._discard(user.id, file_id, written)
            raise
        finally:
            for temp in temps:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
        info = done["file"]
        stored_id = sent.pop("file_id", file_id)
        if stored_id != file_id:  # a retry of an upload whose first try was sent
            info = (await self._files("lookup", wire.FilesLookup(
                user_id=user.id, file_id=stored_id)))["file"]
        log.info("upload %s user=%s room=%s %d bytes %s", file_id, user.id, room, part.size, mime)
        return JSONResponse({"file": info, "message": sent}, status_code=201, headers=NO_STORE)

    async def _discard(self, user_id: int, file_id: str, written: list[str]) -> None:
        for key in written:
            with contextlib.suppress(Exception):
                await self.store.delete(key)
        with contextlib.suppress(Exception):
            await self._files("abort", wire.FilesAbort(user_id=user_id, file_id=file_id))

    async def _receive(self, request: Request, temp: Path, reserved: dict[str, Any]) -> _Part:
        """Stream the body's one file part into ``temp`` (fsynced), within the limit."""
        self.temp.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        sink = os.fdopen(fd, "wb", buffering=256 * 1024)
        limit, reason = int(reserved["limit"]), str(reserved["limit_reason"])
        if self.settings.max_upload_bytes < limit:  # this edge's own setting also holds
            limit, reason = self.settings.max_upload_bytes, "max_upload_bytes"
        part = _Part(sink=sink, limit=limit, limit_reason=reason)
        parser = MultipartParser(_boundary(request), _callbacks(part),  # type: ignore[arg-type]
                                 max_header_size=MAX_PART_HEADER_BYTES)
        idle = self.settings.upload_idle_timeout
        try:
            chunks = request.stream().__aiter__()
            while True:
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), idle)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise _Refused(f"the upload sent nothing for {idle:g} s",
                                   errors.REQUEST_TIMEOUT) from None
                except ClientDisconnect:
                    raise _Refused("the client went away", errors.BAD_REQUEST) from None
                if chunk:
                    parser.write(chunk)
                if part.size > part.limit:
                    raise _limit_error(part, self.settings.max_upload_bytes)
            parser.finalize()
        except _PartError as exc:
            raise _Refused(str(exc), errors.BAD_REQUEST) from None
        except ValueError as exc:  # python-multipart's parse errors
            raise _Refused(f"malformed multipart body: {exc}", errors.BAD_REQUEST) from None
        finally:
            sink.flush()
            await asyncio.to_thread(os.fsync, sink.fileno())
            sink.close()
        if not part.done:
            raise _Refused("the body has no complete part named 'file'", errors.BAD_REQUEST)
        return part

    # -------------------------------------------------------------- download

    async def download(self, request: Request) -> Response:
        user = await self._user(request)
        file_id = request.path_params["file_id"]
        variant = request.path_params.get("variant")
        if not _FILE_ID.match(file_id) or variant not in (None, *files.VARIANTS):
            raise CamError("no such file", errors.NOT_FOUND)
        found = await self._files("lookup", wire.FilesLookup(user_id=user.id, file_id=file_id))
        info = found["file"]
        if variant is not None and variant not in found["variants"]:
            raise CamError("no such file", errors.NOT_FOUND)
        key = files.variant_key(file_id, variant)
        store = self.store
        if self.settings.storage == "local":
            store = self.local
            if not await self.local.exists(key):
                await self._fetch_once(key, found)
        try:
            obj = await store.get(key, request.headers.get("range"))
        except KeyError:
            log.error("file %s has a row but no bytes in the %s store", key, self.settings.storage)
            raise CamError("the file's bytes are missing from storage; tell the administrator",
                           errors.UNAVAILABLE) from None
        except storage.RangeNotSatisfiable as exc:
            return Response(status_code=416, headers={"content-range": f"bytes */{exc.total}",
                                                      **_content_headers()})
        mime = "image/webp" if variant else info["type"]
        headers = {
            **_content_headers(),
            "content-length": str(obj.length),
            "accept-ranges": "bytes",
            "content-disposition": files.disposition(
                info["name"] if not variant else f"{variant}-{info['name']}.webp", mime),
            "etag": f"\"{found['sha256'][:32]}{'-' + variant if variant else ''}\"",
            "cache-control": "private, max-age=3600",
        }
        if obj.content_range:
            headers["content-range"] = obj.content_range
        if request.method == "HEAD":
            await _close_chunks(obj.chunks)
            return Response(status_code=obj.status, headers=headers, media_type=mime)
        return StreamingResponse(obj.chunks, status_code=obj.status, headers=headers,
                                 media_type=mime)

    # -------------------------------------------------------------- local mode

    async def _fetch_once(self, key: str, found: dict[str, Any]) -> None:
        """Fetch ``key`` from the node holding it, once however many ask at a time."""
        pending = self._fetching.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fetching[key] = future
        try:
            await self._fetch(key, found)
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            del self._fetching[key]

    async def _fetch(self, key: str, found: dict[str, Any]) -> None:
        holder = found.get("holder")
        base = self.peers.get(holder or "")
        if base is None:
            raise CamError(f"this file is held by {holder!r}, which is not in "
                           "cam.clusterHosts", errors.UNAVAILABLE)
        if holder == self.own:
            log.error("file %s should be on this node's disk and is not", key)
            raise CamError("the file's bytes are missing from storage; tell the administrator",
                           errors.UNAVAILABLE)
        if not self.settings.cluster_secret:
            raise CamError("cam.clusterSecret is not set: nodes cannot fetch files from each "
                           "other", errors.UNAVAILABLE)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=PEER_TIMEOUT, follow_redirects=False)
        expires = int(time.time()) + PEER_AUTH_TTL
        temp = self._temp_path(f"{key}.fetch{os.getpid()}")
        self.temp.mkdir(parents=True, exist_ok=True, mode=0o700)
        digest = hashlib.sha256()
        size = 0
        original = key == found["file"]["id"]
        bound = found["file"]["size"] if original else self.settings.max_upload_bytes
        try:
            async with self._client.stream(
                    "GET", f"{base}/CAMServer/files/{key}",
                    headers={PEER_AUTH_HEADER: peer_signature(self.settings.cluster_secret, key,
                                                              expires)}) as answer:
                if answer.status_code != 200:
                    raise CamError(f"the node holding this file ({holder}) answered "
                                   f"{answer.status_code}", errors.UNAVAILABLE)
                with temp.open("wb") as sink:
                    async for chunk in answer.aiter_bytes(storage.CHUNK):
                        size += len(chunk)
                        if size > bound:
                            raise CamError("the holder sent more than the file has",
                                           errors.UNAVAILABLE)
                        digest.update(chunk)
                        sink.write(chunk)
                    sink.flush()
                    await asyncio.to_thread(os.fsync, sink.fileno())
            if original and (size != found["file"]["size"]
                                               or digest.hexdigest() != found["sha256"]):
                raise CamError(f"the copy from {holder} does not match the file's checksum",
                               errors.UNAVAILABLE)
            await self.local.put(key, temp)
            log.info("fetched %s (%d bytes) from %s", key, size, holder)
        except httpx.HTTPError as exc:
            log.warning("fetching %s from %s failed: %s", key, holder, exc)
            raise CamError(f"the node holding this file ({holder}) cannot be reached; try "
                           "again when it is back", errors.UNAVAILABLE) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    async def peer(self, request: Request) -> Response:
        """``GET /CAMServer/files/<key>``: another node of the cluster fetching a file this
        node holds (local mode), signed with cam.clusterSecret. Never fetches further."""
        key = request.path_params["key"]
        try:
            storage.check_key(key)
        except ValueError:
            return Response(status_code=404)
        if self.settings.storage != "local" or not peer_signature_ok(
                self.settings.cluster_secret, key, request.headers.get(PEER_AUTH_HEADER),
                time.time()):
            return Response(status_code=404)
        try:
            obj = await self.local.get(key)
        except KeyError:
            return Response(status_code=404)
        return StreamingResponse(obj.chunks, headers={"content-length": str(obj.length),
                                                      **_content_headers()},
                                 media_type="application/octet-stream")

    async def sweep_local(self) -> None:
        """Local mode: delete files on this node's disk whose rows are gone (swept by
        the files service, or an upload that never committed)."""
        old = await asyncio.to_thread(self._old_files, time.time() - LOCAL_SWEEP_AGE)
        ids = [i for i in old if _FILE_ID.match(i)]
        for start in range(0, len(ids), 1000):
            batch = ids[start:start + 1000]
            known = set((await self._files("known", wire.FilesKnown(user_id=0, ids=batch)))
                        ["known"])
            for file_id in batch:
                if file_id not in known:
                    for path in old[file_id]:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()

    def _old_files(self, cutoff: float) -> dict[str, list[Path]]:
        """Files of this node's store last changed before ``cutoff``, by file id."""
        old: dict[str, list[Path]] = {}
        root = self.local.root
        if not root.is_dir():
            return old
        for shard in root.iterdir():
            if shard.name.startswith(".") or not shard.is_dir():
                continue
            for path in shard.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        old.setdefault(path.name.split(".")[0], []).append(path)
        return old


# ---------------------------------------------------------------- parsing


class _PartError(Exception):
    pass


class _Refused(CamError):
    pass


def _boundary(request: Request) -> bytes:
    _, options = parse_options_header(request.headers.get("content-type"))
    return options[b"boundary"]


def _callbacks(part: _Part) -> dict[str, Any]:
    """python-multipart callbacks that write the part named 'file' to ``part.sink``."""

    def on_part_begin() -> None:
        part.parts += 1
        if part.parts > 4:
            raise _PartError("too many parts: send one part named 'file'")
        part.headers = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        part.headers[part.header_field.lower()] = part.header_value
        part.header_field = part.header_value = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        field_name = options.get(b"name", b"")
        part.in_file = field_name == b"file" and not part.done
        if part.in_file:
            raw = options.get(b"filename*") or options.get(b"filename") or b""
            part.name = raw.decode("utf-8", "replace")
            ctype = part.headers.get(b"content-type")
            part.declared_type = ctype.decode("latin-1") if ctype else None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if not part.in_file:
            return
        chunk = data[start:end]
        part.size += len(chunk)
        if part.size > part.limit:
            return  # the read loop refuses it after this write()
        if len(part.head) < files.HEAD_BYTES:
            part.head += chunk[:files.HEAD_BYTES - len(part.head)]
        part.digest.update(chunk)
        part.sink.write(chunk)

    def on_part_end() -> None:
        if part.in_file:
            part.done = True
            part.in_file = False

    return {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
            "on_part_end": on_part_end}


def _too_large(size: int, limit: int) -> CamError:
    return CamError(f"the upload is {size} bytes; the limit is {limit} bytes "
                    "(cam.maxUploadBytes)", errors.FILE_TOO_LARGE)


def _limit_error(part: _Part, max_upload: int) -> CamError:
    if part.limit_reason == "quota":
        return CamError(f"the file is over the {part.limit} bytes left of your upload quota",
                        errors.QUOTA_EXCEEDED)
    return CamError(f"the file is over {max_upload} bytes (cam.maxUploadBytes)",
                    errors.FILE_TOO_LARGE)


def _content_headers() -> dict[str, str]:
    return {"x-content-type-options": "nosniff",
            "content-security-policy": files.USER_CONTENT_CSP,
            "cross-origin-resource-policy": "same-origin"}


async def _fsync(path: Path) -> None:
    def sync() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    await asyncio.to_thread(sync)


async def _close_chunks(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
