"""An edge accepts an event only on the subject of the kind allowed to publish it, so
another edge cannot pass a forged membership or room change off as the allocator's
or chat's (the bus lets edges publish only ``.signal`` and ``.session``)."""

from __future__ import annotations

import pytest
from cam_edge.hub import _from_its_publisher

from camcore import subjects


@pytest.mark.parametrize(("subject", "kind", "accepted"), [
    (subjects.conf_signal(3), "signal", True),
    (subjects.conf_signal(3), "participant_joined", False),  # forged by an edge
    (subjects.conf_signal(3), "room_moved", False),
    (subjects.conf_events(3), "participant_joined", True),
    (subjects.conf_events(3), "signal", False),
    (subjects.user_session(5), "session_revoked", True),
    (subjects.user_session(5), "room_added", False),           # forged by an edge
    (subjects.user_events(5), "room_added", True),
    (subjects.user_events(5), "session_revoked", False),
    ("cam.user.5.other", "room_added", False),
])
def test_an_event_counts_only_on_its_publishers_subject(subject: str, kind: str, accepted: bool):
    assert _from_its_publisher(subject, {"type": kind}) is accepted
