"""Where a new conference goes: pure logic, no I/O.

Servers are tried in their ``cam.videoDomains`` order (fill-first). A server's load
counts participants and conferences: every conference counts for at least one
participant (its first one is on the way), so a burst of new rooms fills a server as
surely as the people in them. A server takes a new conference while its load has not
exceeded its capacity. Draining and unhealthy servers take none. When every usable
server is over capacity the overflow policy decides: ``least_loaded`` picks the lowest
load relative to capacity (capacity acts as a weight), ``reject`` refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

LEAST_LOADED = "least_loaded"
REJECT = "reject"


@dataclass(frozen=True, slots=True)
class ServerLoad:
    name: str
    capacity: int
    participants: int = 0
    empty_conferences: int = 0
    draining: bool = False
    healthy: bool = True

    @property
    def load(self) -> int:
        return self.participants + self.empty_conferences

    @property
    def usable(self) -> bool:
        return self.healthy and not self.draining


@dataclass(frozen=True, slots=True)
class Decision:
    server: str | None
    load: int
    overflow: bool
    steps: tuple[str, ...]

    @property
    def explanation(self) -> str:
        return "; ".join(self.steps)


def _describe(s: ServerLoad) -> str:
    return (f"{s.name}: load {s.load} ({s.participants} participants + "
            f"{s.empty_conferences} empty conferences) of capacity {s.capacity}")


def place(servers: list[ServerLoad], policy: str = LEAST_LOADED) -> Decision:
    """Choose a server for a new conference; ``servers`` in cam.videoDomains order."""
    steps: list[str] = []
    for s in servers:
        if not s.healthy:
            steps.append(f"{s.name}: skipped, not healthy")
        elif s.draining:
            steps.append(f"{s.name}: skipped, draining")
        elif s.load > s.capacity:
            steps.append(f"{_describe(s)}: skipped, over capacity")
        else:
            steps.append(f"{_describe(s)}: chosen, first in order not over capacity")
            return Decision(s.name, s.load, False, tuple(steps))
    usable = [s for s in servers if s.usable]
    if not usable:
        steps.append("no healthy server that is not draining")
        return Decision(None, 0, True, tuple(steps))
    if policy == REJECT:
        steps.append("every server is over capacity and the overflow policy is 'reject'")
        return Decision(None, 0, True, tuple(steps))
    best = min(usable, key=lambda s: (s.load / s.capacity, servers.index(s)))
    steps.append(f"every server is over capacity: overflow policy 'least_loaded' chose "
                 f"{best.name} (load/capacity {best.load}/{best.capacity})")
    return Decision(best.name, best.load, True, tuple(steps))
