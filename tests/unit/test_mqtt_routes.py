"""Routes: matching, mosquitto-style prefix rewriting, merging overlapping routes."""

from __future__ import annotations

from agent.mqtt.routes import Route, RouteTable, Target


def test_prefixes_are_rewritten_as_mosquitto_does() -> None:
    route = Route("local/sensors/#", "local/", "site-a/", 1, ("P",), "mappings[0]")
    assert route.rewrite("local/sensors/t") == "site-a/sensors/t"
    assert route.rewrite("local") is None  # the parent level '#' matches, without the prefix
    single = Route("here/t", "here/t", "there/t", 1, ("P",), "mappings[1]")
    assert single.rewrite("here/t") == "there/t"
    assert Route("x", "x", "", 1, ("P",), "m").rewrite("x") is None  # nothing left


def test_targets_merge_overlaps_and_keep_the_lower_qos() -> None:
    table = RouteTable(
        [
            Route("a/#", "", "", 1, ("P", "Q"), "mappings[0]"),
            Route("a/+", "", "", 0, ("P",), "peer P"),
            Route("b/#", "", "", 1, ("P",), "mappings[1]"),
        ]
    )
    assert sorted(table.targets("a/x", 1), key=lambda t: t.peer) == [
        Target("P", "a/x", 1),
        Target("Q", "a/x", 1),
    ]
    assert table.targets("a/x", 0) == [Target("P", "a/x", 0), Target("Q", "a/x", 0)]
    assert table.targets("c", 1) == []
    assert table.filters() == {"a/#": 1, "a/+": 0, "b/#": 1}
