"""Attachments in an S3-compatible bucket (``cam.storage=s3``): AWS, MinIO, rclone, Ceph...

Objects are ``files/<key>`` in the bucket, which must exist (``S3Store.check`` says so
clearly when it does not). boto3 is synchronous, so every call runs in a thread, on one
client (boto3 clients are thread-safe) with short timeouts and one retry: a store that
is down or refuses our keys becomes an ``unavailable`` error (``S3Error``) in seconds,
never a hang. Requests are path-style and signed with SigV4, which every S3 server
speaks; checksums are only sent when an operation requires them, since servers other
than AWS often do not take the newer trailing checksums.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import Any, Final

import boto3.exceptions
import boto3.session
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from . import errors
from .storage import CHUNK, RangeNotSatisfiable, Store, StoredObject, check_key, parse_range

PREFIX: Final = "files/"
TIMEOUT: Final = 5.0
"""Seconds to connect, and to wait for each read of an answer."""

# Parts of 8 MiB above 8 MiB, a few at a time: an upload of the 100 MiB limit is 13 parts.
TRANSFER = TransferConfig(multipart_threshold=8 * 1024 * 1024,
                          multipart_chunksize=8 * 1024 * 1024, max_concurrency=4)

_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_REFUSED = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
            "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed",
            "InvalidClientTokenId", "RequestTimeTooSkewed"}
_BAD_RANGE = {"416", "InvalidRange"}

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

#: Errors of reading an answer's body part way (the server went away, or stalled).
_READ_ERRORS: Final[tuple[type[BaseException], ...]] = (
    botocore.exceptions.BotoCoreError, OSError, ValueError)


class S3Error(errors.Unavailable):
    """The bucket cannot be used: unreachable, our keys refused, or no such bucket."""


def single_range(header: str | None) -> str | None:
    """The Range header to pass on for one ``bytes=`` range; None to serve the whole
    object (no header, several ranges, or one we do not understand: RFC 9110 lets a
    server ignore Range, and S3 servers differ on these)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if first and last and int(last) < int(first):
        return None
    return f"bytes={first}-{last}"


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class _Body:
    """The chunks of one answer's body, read in a thread. The body (and its connection)
    is closed at its end, on an error, on ``aclose()``, when the reader is cancelled in a
    read (once the read under way in its thread is over, so the connection is never
    closed under it), and at the latest when the reader is dropped unfinished."""

    def __init__(self, store: S3Store, body: Any) -> None:
        self._store, self._body = store, body
        self._closed = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        read = asyncio.ensure_future(asyncio.to_thread(self._body.read, CHUNK))
        try:
            data: bytes = await asyncio.shield(read)
        except asyncio.CancelledError:
            read.add_done_callback(self._close_after)
            raise
        except _READ_ERRORS as exc:
            self._close()
            raise self._store.failure("read", exc) from exc
        except BaseException:
            self._close()
            raise
        if not data:
            self._close()
            raise StopAsyncIteration
        return data

    def _close_after(self, read: asyncio.Future[bytes]) -> None:
        if not read.cancelled():
            read.exception()  # retrieved: nobody waits for it any more
        self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._body.close()

    async def aclose(self) -> None:
        self._close()

    def __del__(self) -> None:
        self._close()


class S3Store(Store):
    """A bucket of an S3-compatible server at ``endpoint`` (``http(s)://host:port``).

    Without ``access_key``/``secret_key`` boto3 finds credentials itself (environment,
    ~/.aws, an instance role)."""

    def __init__(self, endpoint: str, bucket: str, region: str = "us-east-1",
                 access_key: str = "", secret_key: str = "", *, timeout: float = TIMEOUT,
                 attempts: int = 2) -> None:
        self.endpoint, self.bucket, self.region = endpoint.rstrip("/"), bucket, region
        self.access_key = access_key
        config = Config(
            region_name=region, signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=timeout, read_timeout=timeout,
            retries={"total_max_attempts": attempts, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=20,
        )
        try:
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint or None, config=config,
                aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None)
        except ValueError as exc:  # botocore: "Invalid endpoint: ..."
            raise S3Error(f"S3 endpoint {endpoint!r} is not a URL: {exc}") from exc

    def name(self, key: str) -> str:
        return PREFIX + check_key(key)

    def failure(self, what: str, exc: BaseException) -> S3Error:
        """A clear error for ``exc`` of operation ``what``, naming endpoint and bucket
        (never the secret key)."""
        where = f"bucket {self.bucket!r} at {self.endpoint}"
        if isinstance(exc, botocore.exceptions.ClientError):
            code, status = _code(exc), _status(exc)
            if code in _REFUSED or status == 403:
                return S3Error(f"S3 {what} refused ({code or status}): check the access key "
                               f"{self.access_key!r} and its secret key for {where}")
            if code in _NO_BUCKET:
                return S3Error(f"S3 {what} failed: {where} does not exist")
            message = exc.response.get("Error", {}).get("Message", "")
            return S3Error(f"S3 {what} failed on {where}: {code or status} {message}".rstrip())
        if isinstance(exc, botocore.exceptions.NoCredentialsError
                      | botocore.exceptions.PartialCredentialsError):
            return S3Error(f"S3 {what} failed: no credentials for {where} "
                           "(set cam.s3AccessKey and cam.s3SecretKey)")
        if isinstance(exc, botocore.exceptions.EndpointConnectionError
                      | botocore.exceptions.ConnectionClosedError):
            return S3Error(f"S3 {what} failed: cannot reach {where}")
        if isinstance(exc, botocore.exceptions.ConnectTimeoutError
                      | botocore.exceptions.ReadTimeoutError):
            return S3Error(f"S3 {what} failed: no answer in time from {where}")
        return S3Error(f"S3 {what} failed on {where}: {type(exc).__name__}: {exc}")

    async def _call(self, what: str, method: str, **kw: Any) -> Any:
        """``client.<method>(Bucket=..., **kw)`` in a thread. ClientErrors that the caller
        may want to tell apart (missing key, bad range) come out as they are."""
        try:
            return await asyncio.to_thread(getattr(self._client, method), Bucket=self.bucket, **kw)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in _MISSING or code in _BAD_RANGE:
                raise
            raise self.failure(what, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self.failure(what, exc) from exc

    async def check(self) -> None:
        """Raise S3Error, naming the endpoint and the bucket, unless the bucket is there
        and takes our keys (HeadBucket)."""
        try:
            await self._call("check", "head_bucket")
        except botocore.exceptions.ClientError as exc:  # a 404: HEAD answers have no code
            if _status(exc) == 404 or _code(exc) in _MISSING:
                raise S3Error(f"S3 bucket {self.bucket!r} does not exist at {self.endpoint} "
                              "(create it, or set cam.s3Bucket)") from exc
            raise self.failure("check", exc) from exc

    async def put(self, key: str, src: Path) -> None:
        name = self.name(key)

        def upload() -> None:
            try:
                self._client.upload_file(str(src), self.bucket, name, Config=TRANSFER)
            except boto3.exceptions.S3UploadFailedError as exc:
                # boto3 wraps the ClientError in a message: give back the error itself.
                cause = exc.__cause__ or exc.__context__
                raise cause if isinstance(cause, Exception) else exc from None

        try:
            await asyncio.to_thread(upload)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError,
                boto3.exceptions.Boto3Error) as exc:
            raise self.failure("upload", exc) from exc
        await asyncio.to_thread(src.unlink, missing_ok=True)

    async def exists(self, key: str) -> bool:
        try:
            await self._call("exists", "head_object", Key=self.name(key))
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING or _status(exc) == 404:
                return False
            raise self.failure("exists", exc) from exc
        return True

    async def delete(self, key: str) -> None:
        try:
            await self._call("delete", "delete_object", Key=self.name(key))
        except botocore.exceptions.ClientError as exc:
            if _code(exc) not in _MISSING:
                raise self.failure("delete", exc) from exc

    async def _size(self, key: str) -> int:
        try:
            head = await self._call("get", "head_object", Key=self.name(key))
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING or _status(exc) == 404:
                raise KeyError(key) from None
            raise self.failure("get", exc) from exc
        return int(head["ContentLength"])

    async def get(self, key: str, range_header: str | None = None) -> StoredObject:
        wanted = single_range(range_header)
        kw: dict[str, Any] = {"Key": self.name(key)}
        if wanted is not None:
            kw["Range"] = wanted
        try:
            answer = await self._call("get", "get_object", **kw)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in _MISSING:
                raise KeyError(key) from None
            if code in _BAD_RANGE and wanted is not None:
                return await self._get_unsatisfied(key, wanted)
            raise self.failure("get", exc) from exc
        body = _Body(self, answer["Body"])
        length = int(answer["ContentLength"])
        content_range = answer.get("ContentRange")
        # The Content-Range says a range came back; some servers (rclone) answer it 200.
        if content_range:
            size = str(content_range).rpartition("/")[2]
            try:
                total = int(size) if size.isdigit() else await self._size(key)  # "/*": unknown
            except BaseException:
                await body.aclose()
                raise
            return StoredObject(206, length, total, str(content_range), body)
        return StoredObject(200, length, length, None, body)

    async def _get_unsatisfied(self, key: str, wanted: str) -> StoredObject:
        """After a 416: RangeNotSatisfiable, unless the range does fit the object as RFC
        9110 reads it (rclone refuses a suffix longer than the object, which means all
        of it): then that range, asked for again in first-last form."""
        total = await self._size(key)
        span = parse_range(wanted, total) if total else None
        again = f"bytes={span[0]}-{span[1]}" if span is not None else wanted
        if again == wanted:  # not a range we can put better
            raise RangeNotSatisfiable(total)
        return await self.get(key, again)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)
