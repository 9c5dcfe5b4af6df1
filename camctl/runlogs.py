"""The log folders of ``camctl up``: one per run, the old ones pruned, rotated files read.

Each run writes into ``<data>/logs/<run id>/`` (``latest`` points at the newest), one
file per process, rotated by its supervisor (``camctl.supervisor.LogRotation``):
``edge.log`` is being written, ``edge.log.1`` is the one before, and so on. A run
removes the folders of all but the newest ``cam.logKeepRuns`` runs as it starts.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

LATEST: Final = "latest"
_RUN_ID: Final = re.compile(r"\d{8}-\d{6}")
"""A run's folder name, ``time.strftime("%Y%m%d-%H%M%S")``: nothing else is removed."""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def start_run(logs: Path, run_id: str, keep: int) -> tuple[Path, list[Path]]:
    """Make the folder of run ``run_id`` under ``logs``, point ``latest`` at it and remove
    the folders of older runs beyond the newest ``keep``. Returns the folder and those
    removed."""
    folder = logs / run_id
    folder.mkdir(parents=True, exist_ok=True)
    latest = logs / LATEST
    latest.unlink(missing_ok=True)
    latest.symlink_to(run_id)
    return folder, prune(logs, keep, current=run_id)


def prune(logs: Path, keep: int, *, current: str) -> list[Path]:
    """Remove run folders beyond the newest ``keep`` (never ``current``); returns them."""
    runs = sorted(p for p in logs.iterdir()
                  if _RUN_ID.fullmatch(p.name) and p.is_dir() and not p.is_symlink())
    removed = []
    for old in runs[:max(0, len(runs) - keep)]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


class RotatedLog:
    """One process's log, read as one stream across its supervisor's rotations: when
    ``<name>.log`` grows past its size it is renamed ``<name>.log.1`` (the older ones
    move up) and a new ``<name>.log`` is started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = path.open("rb")

    def __enter__(self) -> RotatedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def tail(self, lines: int) -> list[str]:
        """The last ``lines`` lines so far, from the files rotated before this one too
        when it has fewer (it may just have been rotated); reads the file to its end."""
        text = self._file.read()
        for index in range(1, 1000):
            if text.count(b"\n") > lines:
                break
            try:
                text = self.path.with_name(f"{self.path.name}.{index}").read_bytes() + text
            except FileNotFoundError:
                break
        return text.decode("utf-8", "replace").splitlines()[-lines:] if lines > 0 else []

    def follow(self, *, poll: float = 0.3) -> Iterator[str]:
        """What is written from here on, forever: after a rotation, the rest of the old
        file, then the new one from its start."""
        while True:
            chunk = self._file.read()
            if chunk:
                yield chunk.decode("utf-8", "replace")
                continue
            try:
                rotated = os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
            except FileNotFoundError:
                rotated = False  # between the rename and the new file: look again
            if rotated:
                rest = self._file.read()  # written just before the rename
                if rest:
                    yield rest.decode("utf-8", "replace")
                self._file.close()
                self._file = self.path.open("rb")
                continue
            time.sleep(poll)
