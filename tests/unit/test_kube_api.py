"""The pieces kubectl relies on, without a daemon: selectors, patches, Tables, watch, API CA."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.api_pki import ApiPki
from agent.errors import BadRequestError
from agent.httproute import Query, Request
from agent.identity import load_or_create_identity
from agent.kube_patch import PatchError, UnsupportedMediaTypeError, apply_patch
from agent.kube_select import Selector, parse_label_selector
from agent.kube_tables import NotAcceptableError, negotiate, table
from agent.store import StoredPod
from agent.watch import WatchHub, WatchRequest


def _pod(name: str, labels: dict[str, str] | None = None, phase: str = "Running") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {
            "nodeName": "n1",
            "containers": [
                {"name": "a", "env": [{"name": "X", "value": "1"}], "ports": []},
                {"name": "b"},
            ],
        },
        "status": {"phase": phase},
    }


# --- selectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web,tier!=db", {"app": "web", "tier": "fe"}, True),
        ("app!=web", {}, True),
        ("app in (web, api),!canary", {"app": "api"}, True),
        ("app in (web, api),!canary", {"app": "api", "canary": ""}, False),
        ("app notin (web)", {"app": "api"}, True),
        ("tier", {"app": "web"}, False),
        ("replicas>2", {"replicas": "3"}, True),
        ("replicas<2", {"replicas": "x"}, False),
        ("", {"any": "thing"}, True),
    ],
)
def test_label_selectors_match_as_kubernetes_does(
    selector: str, labels: dict[str, str], expected: bool
) -> None:
    assert Selector.parse(selector, None, "pods").matches(_pod("p", labels)) is expected


@pytest.mark.parametrize("bad", ["a b", "!a=b", "a in (x", "-bad=1", "a=b c", "a>x"])
def test_malformed_label_selectors_are_bad_requests(bad: str) -> None:
    with pytest.raises(BadRequestError, match="unable to parse requirement"):
        parse_label_selector(bad)


def test_field_selectors_filter_and_refuse_unknown_fields() -> None:
    running, failed = _pod("a"), _pod("b", phase="Failed")
    selector = Selector.parse(None, "spec.nodeName=n1,status.phase!=Failed", "pods")
    assert selector.filter([running, failed]) == [running]
    escaped = Selector.parse(None, r"metadata.name=a\,b", "pods")
    assert escaped.fields[0].value == "a,b"
    with pytest.raises(BadRequestError, match=r"field label not supported: spec\.image"):
        Selector.parse(None, "spec.image=x", "pods")
    with pytest.raises(BadRequestError, match="invalid field selector"):
        Selector.parse(None, "status.phase", "pods")


# --- patches -----------------------------------------------------------------------------------


def test_strategic_merge_patch_merges_keyed_lists_and_honours_directives() -> None:
    patch = {
        "metadata": {"labels": {"app": None, "new": "1"}},
        "spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [
                {"name": "a", "env": [{"name": "Y", "value": "2"}]},
                {"name": "b", "$patch": "delete"},
                {"name": "c", "image": "busybox"},
            ],
        },
    }
    original = _pod("p", {"app": "web", "keep": "1"})
    result = apply_patch(
        "application/strategic-merge-patch+json", original, json.dumps(patch).encode()
    )
    assert result["metadata"]["labels"] == {"keep": "1", "new": "1"}
    assert [c["name"] for c in result["spec"]["containers"]] == ["a", "c"]
    assert result["spec"]["containers"][0]["env"] == [
        {"name": "X", "value": "1"},
        {"name": "Y", "value": "2"},
    ]
    assert original["metadata"]["labels"] == {"app": "web", "keep": "1"}  # not modified


def test_strategic_replace_and_retain_keys() -> None:
    patch = {
        "spec": {
            "containers": [{"$patch": "replace"}, {"name": "z"}],
            "$retainKeys": ["containers"],
        }
    }
    result = apply_patch(
        "application/strategic-merge-patch+json", _pod("p"), json.dumps(patch).encode()
    )
    assert result["spec"] == {"containers": [{"name": "z"}]}


def test_merge_patch_replaces_lists_and_other_types_are_refused() -> None:
    patch = b'{"spec": {"containers": [{"name": "only"}]}, "status": null}'
    result = apply_patch("application/merge-patch+json; charset=utf-8", _pod("p"), patch)
    assert result["spec"]["containers"] == [{"name": "only"}]
    assert "status" not in result
    with pytest.raises(UnsupportedMediaTypeError, match="json-patch"):
        apply_patch("application/json-patch+json", _pod("p"), b"[]")
    with pytest.raises(PatchError, match="merge key"):
        apply_patch(
            "application/strategic-merge-patch+json",
            _pod("p"),
            b'{"spec": {"containers": [{"image": "x"}]}}',
        )
    with pytest.raises(PatchError, match="JSON object"):
        apply_patch("application/merge-patch+json", _pod("p"), b"[1]")


# --- tables ------------------------------------------------------------------------------------


def _request(accept: str | None, query: str = "") -> Request:
    headers = (("accept", accept),) if accept else ()
    return Request("GET", "/api/v1/pods", Query.parse(query), headers)


def test_negotiation_picks_tables_json_or_refuses() -> None:
    kubectl = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,"
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    )
    assert negotiate(_request(kubectl)).table
    assert negotiate(_request(kubectl, "includeObject=Object")).include == "Object"
    assert not negotiate(_request("application/json")).table
    assert not negotiate(_request(None)).table
    discovery = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,*/*"
    assert not negotiate(_request(discovery)).table
    with pytest.raises(NotAcceptableError):
        negotiate(_request("application/vnd.kubernetes.protobuf"))
    with pytest.raises(BadRequestError):
        negotiate(_request(kubectl, "includeObject=All"))


def test_pod_table_has_kubectl_columns_and_metadata_rows() -> None:
    pod = _pod("web", {"app": "web"})
    pod["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    pod["status"]["containerStatuses"] = [{"ready": True, "restartCount": 2}]
    body = table("pods", [pod], "7", now=1704067200 + 90)
    names = [c["name"] for c in body["columnDefinitions"] if c["priority"] == 0]
    assert names == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert body["rows"][0]["cells"][:5] == ["web", "1/2", "Running", "2", "90s"]
    assert body["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert body["rows"][0]["object"]["metadata"]["labels"] == {"app": "web"}
    assert body["metadata"]["resourceVersion"] == "7"


# --- watch -------------------------------------------------------------------------------------


def _stored(name: str, version: int, labels: dict[str, str] | None = None) -> StoredPod:
    manifest = {"metadata": {"name": name, "namespace": "default", "labels": labels or {}}}
    return StoredPod("default", name, f"uid-{name}", manifest, 0.0, version, None, None, {})


def _render(pod: StoredPod) -> dict[str, Any]:
    return {
        "metadata": {**pod.manifest["metadata"], "resourceVersion": str(pod.resource_version)},
        "spec": {},
    }


async def _collect(
    hub: WatchHub, request: WatchRequest, current: list[dict[str, Any]], count: int
) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    async for kind, obj in hub.events(request, lambda: current):
        events.append((kind, obj["metadata"].get("name") or obj.get("reason", "")))
        if len(events) == count:
            break
    return events


async def test_watch_resumes_from_a_version_and_applies_selectors() -> None:
    hub = WatchHub(_render, version=10)
    hub.pod_changed("ADDED", _stored("a", 11, {"app": "web"}))
    hub.pod_changed("ADDED", _stored("b", 12))
    resumed = WatchRequest(None, Selector.parse("app=web", None, "pods"), since=11)
    task = asyncio.create_task(_collect(hub, resumed, [], 3))
    await asyncio.sleep(0)
    hub.pod_changed("MODIFIED", _stored("b", 13, {"app": "web"}))  # starts matching
    hub.pod_changed("MODIFIED", _stored("a", 14, {"app": "db"}))  # stops matching
    hub.pod_changed("DELETED", _stored("b", 15, {"app": "web"}))
    assert await asyncio.wait_for(task, 5) == [("ADDED", "b"), ("DELETED", "a"), ("DELETED", "b")]


async def test_watch_without_version_lists_first_and_too_old_version_expires() -> None:
    hub = WatchHub(_render, version=0, history=2)
    current = [_render(_stored("x", 1))]
    hub.pod_changed("ADDED", _stored("x", 1))
    fresh = WatchRequest("default", Selector(), since=None)
    task = asyncio.create_task(_collect(hub, fresh, current, 2))
    await asyncio.sleep(0)
    hub.pod_changed("MODIFIED", _stored("x", 2))
    assert await asyncio.wait_for(task, 5) == [("ADDED", "x"), ("MODIFIED", "x")]
    hub.pod_changed("MODIFIED", _stored("x", 3))  # version 1 leaves the history
    expired = await _collect(hub, WatchRequest(None, Selector(), since=0), [], 1)
    assert expired == [("ERROR", "Expired")]


async def test_watch_ends_at_its_timeout() -> None:
    hub = WatchHub(_render, version=0)
    request = WatchRequest(None, Selector(), since=0, timeout=0.05)
    assert await asyncio.wait_for(_collect(hub, request, [], 99), 5) == []


# --- the API CA --------------------------------------------------------------------------------


def _csr(key: Any) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_api_ca_issues_client_certificates_that_its_server_context_accepts(
    tmp_path: Path,
) -> None:
    identity = load_or_create_identity(tmp_path, "board")
    pki = ApiPki.load_or_create(tmp_path / "api-pki", identity)
    assert (tmp_path / "api-pki" / "ca.key").stat().st_mode & 0o777 == 0o600
    issued = pki.issue_client(_csr(ec.generate_private_key(ec.SECP256R1())), "alice", 30)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert cert.subject.rfc4514_string() == "CN=alice"
    cert.verify_directly_issued_by(pki.ca_certificate)
    server = x509.load_pem_x509_certificate((tmp_path / "api-pki" / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [pki.server_name]
    context = pki.server_context(identity, None)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    again = ApiPki.load_or_create(tmp_path / "api-pki", identity)  # reloads, keeps the CA
    assert again.ca_pem == pki.ca_pem


def test_api_ca_refuses_bad_requests(tmp_path: Path) -> None:
    pki = ApiPki.load_or_create(tmp_path / "api-pki", load_or_create_identity(tmp_path, "b"))
    good = _csr(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(BadRequestError, match="not a PEM certificate signing request"):
        pki.issue_client(b"junk", "alice", 1)
    weak = _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(BadRequestError, match="at least 2048 bits"):
        pki.issue_client(weak, "alice", 1)
    with pytest.raises(BadRequestError, match="days must be"):
        pki.issue_client(good, "alice", 0)
    with pytest.raises(BadRequestError, match="user must be"):
        pki.issue_client(good, "", 1)
