"""The pairing API of one real agent: showing, status, cancel, and precise errors for bad input."""

from __future__ import annotations

import json

import pytest

from agent.apiclient import ApiClient
from agent.errors import ApiError
from tests.integration.conftest import Agent

pytestmark = pytest.mark.integration

GROUP = "/apis/florete.io/v1alpha1"


def test_show_status_cancel_and_bad_requests(agent: Agent) -> None:
    with ApiClient(agent.state_dir / "agent.sock") as api:
        assert api.request("GET", f"{GROUP}/pairing")["state"] == "none"
        shown = api.request("POST", f"{GROUP}/pairing")
        assert len(shown["code"]) == 9
        assert shown["uri"].startswith("florete://pair?code=")
        assert shown["maxFailures"] == 3
        status = api.request("GET", f"{GROUP}/pairing")
        assert status["kind"] == "PairingStatus"
        assert status["state"] == "showing"
        assert "code" not in status
        assert shown["code"].replace("-", "") not in json.dumps(status)
        assert api.request("DELETE", f"{GROUP}/pairing")["state"] == "cancelled"

        cases = [
            ("POST", f"{GROUP}/pairing/join", {}, 400, "expected a JSON object"),
            ("POST", f"{GROUP}/pairing/join", {"code": "1234-567"}, 400, "has 8 digits"),
            ("POST", f"{GROUP}/pairing/join", {"code": "1234-5670", "peer": 3}, 400, "peer"),
            ("POST", f"{GROUP}/pairing/peers", {"certificate": "x"}, 422, "not a readable"),
            ("POST", f"{GROUP}/pairing/peers", {"certificate": "x", "address": ""}, 400, "1-300"),
            ("POST", f"{GROUP}/peers/nobody/unpair", None, 404, 'no peer "nobody"'),
        ]
        for method, path, body, status_code, message in cases:
            with pytest.raises(ApiError) as caught:
                api.request(method, path, body=body)
            assert caught.value.status == status_code, caught.value.message
            assert message in caught.value.message

    typo = agent.cli("pair", "1234-5672", check=False)
    assert typo.returncode == 1
    assert "check digit does not match" in typo.stderr
    assert "Traceback" not in typo.stderr
    log = agent.log()
    assert shown["code"] not in log
    assert shown["code"].replace("-", "") not in log
