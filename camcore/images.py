"""Thumbnails and previews of image attachments, made with Pillow in a worker process.

Only PNG, JPEG, GIF and WebP are opened. An image is measured from its header before a
pixel is decoded, and refused past ``cam.imageMaxPixels`` (well below Pillow's own
limit); Pillow's bomb warning is an error; and the worker runs under an address-space
limit, so even a decoder bug cannot take the edge's memory. Decoding never runs on the
event loop: the edge hands the file's path to the worker and awaits the answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import resource
import warnings
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from . import errors
from .errors import CamError

log = logging.getLogger(__name__)

FORMATS: Final = ("PNG", "JPEG", "GIF", "WEBP")
SIZES: Final = {"thumb": 320, "preview": 1280}
WORKER_MEMORY: Final = 1024 * 1024 * 1024
"""Address space of the decoding worker, in bytes."""


class BadImage(CamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, errors.BAD_IMAGE)


@dataclass(frozen=True)
class Made:
    width: int
    height: int
    variants: tuple[str, ...]


def _limit_worker(memory: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def _make(src: str, out: dict[str, str], max_pixels: int) -> tuple[int, int, tuple[str, ...]]:
    """In the worker: measure, decode and scale ``src``; write each variant to ``out``."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
        with Image.open(src, formats=FORMATS) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ValueError(f"{width}x{height} is over the {max_pixels}-pixel limit")
            im.seek(0)  # the first frame of an animation
            im.draft("RGB", (SIZES["preview"], SIZES["preview"]))  # JPEG: decode scaled
            im.load()
            oriented = ImageOps.exif_transpose(im)
            oriented = oriented.convert("RGBA" if "A" in oriented.getbands()
                                        or "transparency" in im.info else "RGB")
            size = (width, height) if oriented.size == im.size else oriented.size
            made = []
            for variant, edge in SIZES.items():
                scaled = oriented.copy()
                scaled.thumbnail((edge, edge), Image.Resampling.LANCZOS)
                scaled.save(out[variant], "WEBP", quality=80, method=4)  # no metadata kept
                made.append(variant)
            return size[0], size[1], tuple(made)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"refused as a decompression bomb: {exc}") from None
    except MemoryError:
        raise ValueError("too large to decode") from None
    except (OSError, SyntaxError, EOFError) as exc:  # Pillow's "cannot identify" and friends
        raise ValueError(f"not a readable PNG, JPEG, GIF or WebP image ({exc})") from None


class ImageWorker:
    """One decoding process per edge, started on first use and replaced if it dies."""

    def __init__(self, max_pixels: int, memory: int = WORKER_MEMORY) -> None:
        self.max_pixels = max_pixels
        self.memory = memory
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = asyncio.Lock()  # one image at a time: the worker's memory is bounded

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_limit_worker, initargs=(self.memory,))
        return self._pool

    async def make(self, src: Path, out: dict[str, Path]) -> Made:
        """Measure ``src`` and write its variants; BadImage when it is not a safe image."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            try:
                width, height, variants = await loop.run_in_executor(
                    self._executor(), _make, str(src), {k: str(v) for k, v in out.items()},
                    self.max_pixels)
            except ValueError as exc:
                raise BadImage(str(exc)) from None
            except BrokenProcessPool:
                log.warning("image worker died on %s; starting a new one", src.name)
                self.close()
                raise BadImage("the image could not be decoded within the memory limit") from None
        return Made(width, height, variants)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
