"""CrashLoopBackOff schedule: immediate first restart, 10 s doubling to 300 s, reset after 600 s."""

from agent.backoff import CrashLoopBackOff


def test_schedule_doubles_to_the_cap() -> None:
    backoff = CrashLoopBackOff()
    delays = [backoff.on_exit(ran_for=1.0) for _ in range(9)]
    assert delays == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]


def test_a_long_run_resets_the_schedule() -> None:
    backoff = CrashLoopBackOff()
    for _ in range(5):
        backoff.on_exit(ran_for=1.0)
    assert backoff.on_exit(ran_for=600.0) == 0.0
    assert backoff.on_exit(ran_for=599.9) == 10.0


def test_custom_parameters() -> None:
    backoff = CrashLoopBackOff(initial=0.5, maximum=1.5, reset=5.0)
    assert [backoff.on_exit(0.1) for _ in range(5)] == [0.0, 0.5, 1.0, 1.5, 1.5]
