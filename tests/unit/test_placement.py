"""Conference placement by cam.videoDomains order (pure logic, no servers)."""

from __future__ import annotations

from cam_video_allocator.placement import LEAST_LOADED, REJECT, ServerLoad, place


def spec_servers(loads: tuple[int, int, int]) -> list[ServerLoad]:
    """The spec's camserver1=50;camserver2=50;camserver3=50 with given participants."""
    return [ServerLoad(f"camserver{i + 1}", 50, participants=p) for i, p in enumerate(loads)]


def test_first_server_takes_new_rooms_up_to_and_at_its_capacity():
    assert place(spec_servers((0, 0, 0))).server == "camserver1"
    assert place(spec_servers((49, 0, 0))).server == "camserver1"
    # At exactly 50 it has not exceeded 50: it still takes a new room.
    assert place(spec_servers((50, 0, 0))).server == "camserver1"


def test_once_a_server_exceeds_its_capacity_new_rooms_go_to_the_next():
    decision = place(spec_servers((51, 0, 0)))
    assert decision.server == "camserver2" and not decision.overflow
    assert "camserver1" in decision.explanation and "over capacity" in decision.explanation
    assert place(spec_servers((51, 51, 50))).server == "camserver3"


def test_empty_conferences_count_so_a_burst_of_rooms_cannot_overshoot():
    servers = [ServerLoad("a", 3, participants=2, empty_conferences=2), ServerLoad("b", 3)]
    assert servers[0].load == 4
    assert place(servers).server == "b"


def test_overflow_least_loaded_uses_capacity_as_weight():
    servers = [ServerLoad("small", 10, participants=15), ServerLoad("big", 100, participants=120)]
    decision = place(servers, LEAST_LOADED)
    assert decision.server == "big" and decision.overflow  # 1.2 < 1.5
    assert "least_loaded" in decision.explanation


def test_overflow_reject_refuses():
    decision = place(spec_servers((60, 70, 80)), REJECT)
    assert decision.server is None and decision.overflow
    assert "reject" in decision.explanation


def test_overflow_ties_go_to_the_earlier_server():
    assert place(spec_servers((60, 60, 60))).server == "camserver1"


def test_drained_and_unhealthy_servers_take_no_new_rooms():
    servers = [ServerLoad("a", 50, draining=True), ServerLoad("b", 50, healthy=False),
               ServerLoad("c", 50, participants=10)]
    decision = place(servers)
    assert decision.server == "c"
    assert "a: skipped, draining" in decision.steps
    assert "b: skipped, not healthy" in decision.steps
    # Even in overflow, a draining server is never chosen.
    servers = [ServerLoad("a", 50, draining=True), ServerLoad("c", 50, participants=99)]
    assert place(servers).server == "c"
    assert place([ServerLoad("a", 50, draining=True)]).server is None
