"""A measuring variant of the edge: ``cam_edge.main`` unchanged, run under ``tracemalloc``.

``bench.connections --memory-sites`` runs it to tell where the memory of idle
connections goes: on SIGUSR1 the edge writes the allocation sites that grew since
SIGUSR2 (the baseline) to ``$CAM_MEMTRACE_OUT``, grouped by file and line, biggest
first. Tracing slows the edge and adds its own bookkeeping, so the per-connection
figure of a traced run is not the one reported; its sites are.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from types import FrameType

from cam_edge import main as edge_main

FRAMES = 12
_baseline: tracemalloc.Snapshot | None = None


def _mark(signum: int, frame: FrameType | None) -> None:
    global _baseline
    _baseline = tracemalloc.take_snapshot()


def _dump(signum: int, frame: FrameType | None) -> None:
    snapshot = tracemalloc.take_snapshot()
    out = os.environ.get("CAM_MEMTRACE_OUT", "memtrace.txt")
    lines = []
    if _baseline is not None:
        for key in ("lineno", "traceback"):
            stats = snapshot.compare_to(_baseline, key)
            lines.append(f"## grown since the baseline, by {key}\n")
            for stat in stats[:40 if key == "lineno" else 15]:
                if stat.size_diff <= 0:
                    continue
                lines.append(f"{stat.size_diff:>12} B {stat.count_diff:>8} blocks  "
                             f"{stat.traceback[0]}\n")
                if key == "traceback":
                    lines.extend(f"{'':>32}{line}\n" for line in stat.traceback.format()[-2 * FRAMES:])
    with open(out + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(out + ".tmp", out)  # whole, or not there


if __name__ == "__main__":
    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR2, _mark)
    signal.signal(signal.SIGUSR1, _dump)
    edge_main.main()
