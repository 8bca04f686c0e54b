"""Timeouts from the links: LAN floors, slow and lossy links, grow fast and shrink slowly."""

from __future__ import annotations

import pytest

from supernode.timing import SHRINK_AFTER, LossWindow, TimingTracker, derive, worst


def test_lan_uses_the_floors() -> None:
    t = derive(0.0005)
    assert (t.heartbeat, t.election_min, t.election_max) == (0.1, 0.6, 1.2)
    assert t.failover_after == pytest.approx(2.2)
    assert t.tick == 0.05
    assert derive(None).election_min == 0.6


def test_slow_radio_scales_with_rtt() -> None:
    t = derive(0.4)  # a 9600-baud radio round trip
    assert t.heartbeat == pytest.approx(0.8)
    assert t.election_min == pytest.approx(4.0)
    assert t.election_max == pytest.approx(8.0)
    assert t.failover_after == pytest.approx(9.6)
    assert t.election_min > 3 * t.heartbeat  # pysyncobj's requirement


def test_loss_outlasts_retransmissions() -> None:
    assert derive(0.001, 0.01).election_min == pytest.approx(0.701)  # two losses: 0.6 s
    t = derive(0.001, 0.1)  # four losses of one frame: 0.2 s x 15
    assert t.election_min == pytest.approx(0.1 + 0.001 + 3.0)
    assert derive(0.001, 0.9).election_min == pytest.approx(0.1 + 0.001 + 0.2 * 31)


def test_worst_link() -> None:
    assert worst([(0.01, 0.0), (None, 0.2), (0.3, 0.01)]) == (0.3, 0.2)
    assert worst([]) == (None, 0.0)


def test_tracker_grows_at_once_and_shrinks_after_consistent_samples() -> None:
    tracker = TimingTracker(derive(None))
    assert not tracker.update(0.001, 0.0)
    assert tracker.update(0.5, 0.0)
    assert tracker.current.election_min == pytest.approx(5.0)
    for _ in range(SHRINK_AFTER - 1):
        assert not tracker.update(0.001, 0.0)
    assert not tracker.update(0.5, 0.0)  # a bad sample starts the count again
    for _ in range(SHRINK_AFTER - 1):
        assert not tracker.update(0.001, 0.0)
    assert tracker.update(0.001, 0.0)
    assert tracker.current.election_min == pytest.approx(0.6)


def test_loss_window_forgets_the_past() -> None:
    window = LossWindow()
    assert window.update(0, 0.0) == 0.0
    assert window.update(10, 0.1) == 0.0  # a start-up burst: the window only opens here
    assert window.update(10, 10 / 140) == 0.0  # 40 clean frames: not a full window yet
    assert window.update(10, 10 / 160) == 0.0  # 60 clean frames: the window says 0 %
    assert window.update(16, 16 / 220) == pytest.approx(0.1)  # 6 of the next 60
    assert window.update(3, 0.5) == pytest.approx(0.1)  # a new session starts a new window
    assert window.update(0, 0.0) == 0.0
