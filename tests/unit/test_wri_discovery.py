"""Runtime plugins are found through the florete.wri entry points; a broken one is left out."""

from __future__ import annotations

from pathlib import Path

import pytest

from wri_plugins.api import WorkloadRuntime, discover_runtimes


def test_installed_runtimes_are_found() -> None:
    found = discover_runtimes()
    assert issubclass(found["process"], WorkloadRuntime)


def test_a_broken_plugin_does_not_stop_discovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dist = tmp_path / "brokenplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[florete.wri]\nbroken = no_such_module_here:Runtime\nnotaruntime = json:dumps\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = discover_runtimes()
    assert "process" in found
    assert "broken" not in found
    assert "notaruntime" not in found
    assert "runtime plugin broken (no_such_module_here:Runtime) cannot be loaded" in caplog.text
    assert "runtime plugin notaruntime = json:dumps is not a WorkloadRuntime" in caplog.text
