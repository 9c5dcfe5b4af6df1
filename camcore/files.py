"""Attachments: ids, names, content types and the headers they are served with.

Shared by the edge (which streams the bytes) and the files service (which keeps the
rows). docs/storage.md describes the design; docs/protocol.md the REST calls.
"""

from __future__ import annotations

import secrets
import unicodedata
import urllib.parse
from typing import Any, Final

import puremagic

ID_BYTES: Final = 16
"""22 URL-safe characters: unguessable, and never derived from anything a user sent."""

NAME_MAX_CHARS: Final = 255
HEAD_BYTES: Final = 8192
"""Bytes of the start of a file that sniffing looks at."""

IMAGE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""The only types decoded (thumbnails) and the only ones served inline."""

VARIANTS: Final = ("thumb", "preview")

OCTET_STREAM: Final = "application/octet-stream"

USER_CONTENT_CSP: Final = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
"""The policy of every attachment answer: nothing runs, nothing loads, even if a
browser is talked into rendering it."""

_IMAGE_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)

_IMAGE_EXTENSIONS: Final = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".gif", ".webp"})


def new_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


def variant_key(file_id: str, variant: str | None) -> str:
    """The storage key of a file (``variant`` None) or of one of its derivatives."""
    if variant is None:
        return file_id
    if variant not in VARIANTS:
        raise ValueError(f"no such variant: {variant!r}")
    return f"{file_id}.{variant}"


def clean_name(raw: str | None) -> str:
    """The name an upload is shown with: the last path component of what the client
    sent, without control characters, NFC-normalised, at most 255 characters.

    It is metadata only (stored in the row, sent in FileInfo, quoted in
    Content-Disposition); no path is ever built from it.
    """
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    name = name.lstrip(".") or ""
    if len(name) > NAME_MAX_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16 and stem:
            name = stem[:NAME_MAX_CHARS - len(ext) - 1] + "." + ext
        else:
            name = name[:NAME_MAX_CHARS]
    return name or "file"


def sniff(head: bytes) -> str:
    """The content type of a file from its first bytes (never from its name or from
    what the client declared)."""
    for magic, mime in _IMAGE_MAGIC:
        if head.startswith(magic):
            return mime
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    text = bool(head) and _is_utf8_text(head)
    for match in _magic(head):
        mime = match.mime_type
        if not (mime and "/" in mime and mime.isascii() and len(mime) <= 127
                and ";" not in mime):
            continue
        # A one-byte signature ("{" for JSON) says nothing about random bytes: a
        # text type needs text, and anything else a signature of several bytes.
        if _is_text_type(mime) and not text:
            continue
        if len(match.byte_match) < 2 and not _is_text_type(mime):
            continue
        return mime  # e.g. SVG: stored and served as an attachment, never decoded
    if text:
        return "text/plain"
    return OCTET_STREAM


def _magic(head: bytes) -> list[Any]:
    try:
        return list(puremagic.magic_string(head))
    except (puremagic.PureError, ValueError):
        return []


def _is_text_type(mime: str) -> bool:
    return (mime.startswith("text/") or mime.endswith(("json", "xml"))
            or mime in ("application/javascript", "application/x-sh"))


def _is_utf8_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # The head may end in the middle of a character.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return not any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f" for ch in text)


def claims_image(name: str, declared_type: str | None) -> bool:
    """Whether the uploader says this is an image (its name or declared type): then it
    must be one we can decode, or it is refused."""
    lowered = name.lower()
    dot = lowered.rfind(".")
    if dot >= 0 and lowered[dot:] in _IMAGE_EXTENSIONS:
        return True
    return (declared_type or "").split(";")[0].strip().lower() in IMAGE_TYPES


def disposition(name: str, content_type: str) -> str:
    """``inline`` for the safe image types, ``attachment`` for everything else, with the
    name as an RFC 6266 ``filename*`` and a plain ASCII fallback."""
    kind = "inline" if content_type in IMAGE_TYPES else "attachment"
    fallback = "".join(ch if ch.isascii() and ch.isprintable() and ch not in '"\\;%'
                       else "_" for ch in name) or "file"
    quoted = urllib.parse.quote(name, safe="")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"


def info(row: Any) -> dict[str, Any]:
    """FileInfo (camcore.wire) of a ready ``files`` row, as a dict."""
    out: dict[str, Any] = {"id": row["id"], "name": row["name"], "size": row["size"],
                           "type": row["content_type"]}
    if row["width"]:
        out["width"] = row["width"]
        out["height"] = row["height"]
    return out
