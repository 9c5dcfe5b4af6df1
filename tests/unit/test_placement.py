"""Conference placement by cam.videoDomains order (pure logic, no servers)."""

from __future__ import annotations

from cam_video_allocator.placement import LEAST_LOADED, REJECT, ServerLoad, place


def spec_servers(loads: tuple[int, int, int]) -> list[ServerLoad]:
    """The spec's camserver1=50;camserver2=50;camserver3=50 with given participants."""
    return [ServerLoad(f"camserver{i + 1}", 50, participants=p) for i, p in enumerate(loads)]


def test_first_server_takes_new_rooms_up_to_and_at_its_capacity():
    for load in (0, 49, 50):  # at exactly 50 it has not exceeded 50: it still takes one
        decision = place(spec_servers((load, 0, 0)))
        assert (decision.server, decision.load, decision.overflow) == ("camserver1", load, False)
        assert decision.steps == (
            f"camserver1: load {load} ({load} participants + 0 empty conferences) of capacity 50:"
            " chosen, first in order not over capacity",)


def test_once_a_server_exceeds_its_capacity_new_rooms_go_to_the_next():
    decision = place(spec_servers((51, 0, 0)))
    assert (decision.server, decision.load, decision.overflow) == ("camserver2", 0, False)
    assert decision.steps[0] == ("camserver1: load 51 (51 participants + 0 empty conferences)"
                                 " of capacity 50: skipped, over capacity")
    assert decision.steps[1].startswith("camserver2: load 0 ") and len(decision.steps) == 2
    third = place(spec_servers((51, 51, 50)))
    assert (third.server, third.load, third.overflow) == ("camserver3", 50, False)


def test_empty_conferences_count_so_a_burst_of_rooms_cannot_overshoot():
    # 2 participants on a capacity of 3 would fit; 2 conferences nobody has joined yet
    # are on their way to it, so the next room goes elsewhere.
    servers = [ServerLoad("a", 3, participants=2, empty_conferences=2), ServerLoad("b", 3)]
    assert place([ServerLoad("a", 3, participants=2)]).server == "a"
    decision = place(servers)
    assert decision.server == "b" and not decision.overflow
    assert decision.steps[0] == ("a: load 4 (2 participants + 2 empty conferences) of capacity 3:"
                                 " skipped, over capacity")


def test_overflow_least_loaded_uses_capacity_as_weight():
    servers = [ServerLoad("small", 10, participants=15), ServerLoad("big", 100, participants=120)]
    decision = place(servers, LEAST_LOADED)
    assert (decision.server, decision.load, decision.overflow) == ("big", 120, True)  # 1.2 < 1.5
    assert decision.steps[-1] == ("every server is over capacity: overflow policy 'least_loaded'"
                                  " chose big (load/capacity 120/100)")


def test_overflow_reject_refuses():
    decision = place(spec_servers((60, 70, 80)), REJECT)
    assert decision.server is None and decision.overflow
    assert decision.steps[-1] == "every server is over capacity and the overflow policy is 'reject'"
    assert len(decision.steps) == 4  # each server was considered first, in order


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
