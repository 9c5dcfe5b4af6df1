"""Where the time goes: py-spy samples of running server processes, summarised.

``profile(pids, seconds, tag)`` records each process with ``py-spy record --format raw``
(collapsed stacks, on-CPU samples only) while the caller runs its workload, keeps the
raw files under ``bench/results/profiles/`` and returns, per process, the functions
with the most samples on top of the stack (self) and anywhere in it (inclusive).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .common import RESULTS

PROFILES = RESULTS / "profiles"
_LINE = re.compile(r":\d+\)$")
# Frames every asyncio process has near the root: they say nothing about the cost.
_ROOT_FRAMES = ("<module>", "run (", "run_forever", "_run_once", "_run (", "main (", "_run_module",
                "run_until_complete", "serve (", "_start_serving", "uvloop/")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _short(frame: str) -> str:
    """``func (/long/path/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    frame = _LINE.sub(")", frame.strip())
    if " (" in frame:
        func, path = frame.split(" (", 1)
        parts = path.rstrip(")").split("/")
        return f"{func} ({'/'.join(parts[-2:])})"
    return frame


def summarise(raw: str, top: int = 12) -> dict[str, Any]:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")[1:]]  # the first is the thread
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        if any(r in leaf for r in _ROOT_FRAMES):
            leaf = "(event loop: uvloop's C code and system calls)"
        self_c[leaf] += n
        for f in set(frames):
            incl[f] += n

    def pct(c: Counter[str], skip_root: bool) -> list[list[Any]]:
        rows = [(f, n) for f, n in c.most_common()
                if not (skip_root and any(r in f for r in _ROOT_FRAMES))]
        return [[f, round(100 * n / total, 1)] for f, n in rows[:top]]

    return {"samples": total, "self_pct": pct(self_c, False), "inclusive_pct": pct(incl, True)}


async def profile(pids: dict[str, int], seconds: float, tag: str, rate: int = 250) -> dict[str, Any]:
    """Sample each process for ``seconds``; returns {name: summary}."""
    exe = py_spy()
    if exe is None:
        return {"error": "py-spy not installed (make bench-setup)"}
    PROFILES.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, pid in pids.items():
        out = PROFILES / f"{tag}-{name}.txt"
        procs[name] = (out, await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", str(rate), "--nonblocking", "--format", "raw", "--output", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE))
    result: dict[str, Any] = {}
    for name, (out, proc) in procs.items():
        _, err = await proc.communicate()
        if proc.returncode != 0 or not out.exists():
            result[name] = {"error": err.decode(errors="replace").strip()[-300:]}
        else:
            result[name] = {"file": str(out.relative_to(RESULTS.parent.parent)),
                            **summarise(out.read_text(errors="replace"))}
    return result


def markdown(prof: dict[str, Any], top: int = 8) -> str:
    """A compact Markdown rendering of ``profile``'s result."""
    if "error" in prof:
        return f"(profile not taken: {prof['error']})\n"
    out = []
    for name, p in prof.items():
        if "error" in p:
            out.append(f"- **{name}**: profile failed: {p['error']}")
            continue
        selfs = ", ".join(f"`{f}` {v}%" for f, v in p["self_pct"][:top])
        incl = ", ".join(f"`{f}` {v}%" for f, v in p["inclusive_pct"][:top])
        out.append(f"- **{name}** ({p['samples']} on-CPU samples, raw stacks in `{p['file']}`)\n"
                   f"  - self: {selfs}\n  - inclusive: {incl}")
    return "\n".join(out) + "\n"
