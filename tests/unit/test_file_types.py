"""What the files service calls a file is read from its bytes, never from its name."""
from __future__ import annotations

import random

import pytest

from camcore.files import OCTET_STREAM, sniff


@pytest.mark.parametrize("first", range(256))
def test_random_bytes_are_an_octet_stream_whatever_they_start_with(first: int) -> None:
    # One-byte signatures ("{" for JSON, "[" ...) must not name random data.
    rng = random.Random(first)
    for _ in range(8):
        head = bytes([first]) + rng.randbytes(4095)
        assert sniff(head) == OCTET_STREAM, head[:16]


@pytest.mark.parametrize(("head", "mime"), [
    (b'{"a": [1, 2]}\n', "application/json"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(200), "application/pdf"),
    (b"\x89PNG\r\n\x1a\n" + bytes(32), "image/png"),
    (b"\xff\xd8\xff\xe0" + bytes(32), "image/jpeg"),
    (b"GIF89a" + bytes(32), "image/gif"),
    (b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(32), "image/webp"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "image/svg+xml"),
    ("Grüße, plain words\n".encode(), "text/plain"),
    (b"", OCTET_STREAM),
])
def test_known_kinds_are_recognised(head: bytes, mime: str) -> None:
    assert sniff(head) == mime
