"""Manifest loading and Pod validation: accepted manifests and the model they give."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from agent.errors import ManifestError
from agent.manifest import parse_pod, pod_to_manifest
from agent.manifest_yaml import load_documents
from agent.podspec import (
    Container,
    ContainerPort,
    EnvVar,
    ExecAction,
    HTTPGetAction,
    ObjectMeta,
    Pod,
    PodSpec,
    Probe,
    ResourceList,
    SecurityContext,
    TCPSocketAction,
    expand_vars,
    split_field_path,
)

FULL = """\
apiVersion: v1
kind: Pod
metadata:
  name: sensor-hub
  namespace: edge
  labels: {app: sensor-hub, example.com/tier: backend}
  annotations: {florete.io/note: runs on the gateway}
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 10
  runtimeClassName: process
  hostNetwork: true
  nodeName: gateway-1
  initContainers:
  - name: migrate
    command: [/usr/bin/migrate, --db, $(DB_PATH)]
    env: [{name: DB_PATH, value: /var/lib/hub.db}]
  containers:
  - name: hub
    image: registry.example.com/hub:1.2
    imagePullPolicy: Always
    command: [/bin/hub]
    args: [--listen, ":$(PORT)"]
    workingDir: /srv
    securityContext:
      runAsUser: 1000
      runAsGroup: 1000
      readOnlyRootFilesystem: true
      privileged: false
      allowPrivilegeEscalation: false
    env:
    - {name: PORT, value: "8080"}
    - name: NODE
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    - name: TIER
      valueFrom: {fieldRef: {apiVersion: v1, fieldPath: "metadata.labels['example.com/tier']"}}
    - {name: EMPTY}
    ports:
    - {name: http, containerPort: 8080}
    - {containerPort: 5353, protocol: UDP, hostPort: 5353, hostIP: 127.0.0.1}
    resources:
      limits: {cpu: 500m, memory: 128Mi}
      requests: {cpu: 250m}
    livenessProbe:
      httpGet:
        path: /healthz
        port: http
        host: 127.0.0.1
        scheme: HTTPS
        httpHeaders: [{name: X-Probe, value: live}]
      initialDelaySeconds: 5
      periodSeconds: 20
      timeoutSeconds: 2
      failureThreshold: 4
      terminationGracePeriodSeconds: 3
    readinessProbe:
      tcpSocket: {port: 8080, host: localhost}
      successThreshold: 2
    startupProbe:
      exec: {command: [/bin/hub, --check]}
      failureThreshold: 30
      periodSeconds: 1
"""

FULL_POD = Pod(
    "v1",
    "Pod",
    ObjectMeta(
        "sensor-hub",
        "edge",
        {"app": "sensor-hub", "example.com/tier": "backend"},
        {"florete.io/note": "runs on the gateway"},
    ),
    PodSpec(
        init_containers=(
            Container(
                "migrate",
                command=("/usr/bin/migrate", "--db", "$(DB_PATH)"),
                env=(EnvVar("DB_PATH", "/var/lib/hub.db"),),
            ),
        ),
        containers=(
            Container(
                name="hub",
                image="registry.example.com/hub:1.2",
                image_pull_policy="Always",
                command=("/bin/hub",),
                args=("--listen", ":$(PORT)"),
                env=(
                    EnvVar("PORT", "8080"),
                    EnvVar("NODE", None, "spec.nodeName"),
                    EnvVar("TIER", None, "metadata.labels['example.com/tier']"),
                    EnvVar("EMPTY", ""),
                ),
                working_dir="/srv",
                ports=(
                    ContainerPort(8080, "http", "TCP", 8080),
                    ContainerPort(5353, None, "UDP", 5353, "127.0.0.1"),
                ),
                limits=ResourceList(500, 128 * 2**20),
                requests=ResourceList(250, 128 * 2**20),
                liveness_probe=Probe(
                    HTTPGetAction(8080, "/healthz", "127.0.0.1", "HTTPS", (("X-Probe", "live"),)),
                    initial_delay_seconds=5,
                    period_seconds=20,
                    timeout_seconds=2,
                    failure_threshold=4,
                    termination_grace_period_seconds=3,
                ),
                readiness_probe=Probe(TCPSocketAction(8080, "localhost"), success_threshold=2),
                startup_probe=Probe(
                    ExecAction(("/bin/hub", "--check")), failure_threshold=30, period_seconds=1
                ),
                security_context=SecurityContext(1000, 1000, read_only_root_filesystem=True),
            ),
        ),
        restart_policy="OnFailure",
        termination_grace_period_seconds=10,
        runtime_class_name="process",
        host_network=True,
        node_name="gateway-1",
    ),
)

# What `kubectl get pod -o yaml` prints for `kubectl run web --image=nginx:1.25 --port=80`
# (with automountServiceAccountToken: false, so without the token volume).
KUBECTL_OUTPUT = """\
apiVersion: v1
kind: Pod
metadata:
  creationTimestamp: "2024-05-01T10:00:00Z"
  generation: 1
  labels:
    run: web
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    manager: kubectl-run
    operation: Update
    time: "2024-05-01T10:00:00Z"
  name: web
  namespace: default
  resourceVersion: "4242"
  uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427
spec:
  automountServiceAccountToken: false
  containers:
  - image: nginx:1.25
    imagePullPolicy: IfNotPresent
    name: web
    ports:
    - containerPort: 80
      protocol: TCP
    resources: {}
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: File
  dnsPolicy: ClusterFirst
  enableServiceLinks: true
  nodeName: gateway-1
  preemptionPolicy: PreemptLowerPriority
  priority: 0
  restartPolicy: Always
  schedulerName: default-scheduler
  securityContext: {}
  serviceAccount: default
  serviceAccountName: default
  terminationGracePeriodSeconds: 30
  tolerations:
  - effect: NoExecute
    key: node.kubernetes.io/not-ready
    operator: Exists
    tolerationSeconds: 300
  - effect: NoExecute
    key: node.kubernetes.io/unreachable
    operator: Exists
    tolerationSeconds: 300
status:
  phase: Running
  podIP: 10.0.0.5
  startTime: "2024-05-01T10:00:01Z"
"""


def minimal(container: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A valid pod with one container, with ``container`` and ``spec`` fields merged in."""
    app = {"name": "app", "image": "busybox"} | (container or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [app]} | spec,
    }


def errors_of(obj: Any) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_pod(obj)
    return caught.value.errors


def test_full_manifest_gives_the_model() -> None:
    assert parse_pod(load_documents(FULL)[0]) == FULL_POD


def test_minimal_manifest_gets_kubernetes_defaults() -> None:
    pod = parse_pod(minimal())
    assert pod == Pod(
        "v1",
        "Pod",
        ObjectMeta("p"),
        PodSpec((Container("app", "busybox", "Always"),)),
    )


def test_container_without_image_is_a_host_process() -> None:
    pod = parse_pod(minimal({"image": None, "command": ["sleep", "5"]}))
    assert pod.spec.containers[0] == Container("app", command=("sleep", "5"))


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("busybox", "Always"),
        ("busybox:latest", "Always"),
        ("busybox:1.36", "IfNotPresent"),
        ("localhost:5000/busybox", "Always"),
        ("localhost:5000/busybox:1", "IfNotPresent"),
        ("busybox@sha256:" + "0" * 64, "IfNotPresent"),
    ],
)
def test_image_pull_policy_defaults_from_the_tag(image: str, policy: str) -> None:
    assert parse_pod(minimal({"image": image})).spec.containers[0].image_pull_policy == policy


def test_kubectl_get_output_is_accepted() -> None:
    pod = parse_pod(load_documents(KUBECTL_OUTPUT)[0])
    assert pod == Pod(
        "v1",
        "Pod",
        ObjectMeta("web", labels={"run": "web"}),
        PodSpec(
            (Container("web", "nginx:1.25", "IfNotPresent", ports=(ContainerPort(80),)),),
            node_name="gateway-1",
        ),
    )


@pytest.mark.parametrize("text", [FULL, KUBECTL_OUTPUT], ids=["full", "kubectl"])
def test_pod_to_manifest_round_trips(text: str) -> None:
    pod = parse_pod(load_documents(text)[0])
    manifest = pod_to_manifest(pod)
    assert parse_pod(manifest) == pod
    assert parse_pod(load_documents(yaml.safe_dump(manifest))[0]) == pod
    assert parse_pod(json.loads(json.dumps(manifest))) == pod


def test_pod_to_manifest_writes_defaults_in_kubernetes_shape() -> None:
    manifest = pod_to_manifest(parse_pod(minimal({"resources": {"limits": {"memory": "1e9"}}})))
    assert manifest == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "imagePullPolicy": "Always",
                    "resources": {"limits": {"memory": "1G"}, "requests": {"memory": "1G"}},
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
        },
    }


def test_unset_and_default_valued_fields_are_accepted() -> None:
    manifest = minimal(
        {
            "securityContext": {},
            "volumeMounts": [],
            "envFrom": None,
            "lifecycle": {},
            "tty": False,
            "ports": [{"containerPort": 80, "hostPort": 0}],
        },
        volumes=[],
        nodeSelector={},
        hostname="",
        dnsPolicy="Default",
        enableServiceLinks=False,
        automountServiceAccountToken=False,
    )
    assert parse_pod(manifest) == parse_pod(minimal({"ports": [{"containerPort": 80}]}))


def test_multi_document_stream_skips_empty_documents() -> None:
    text = "---\n" + FULL + "---\n---\n# only a comment\n---\n" + KUBECTL_OUTPUT
    names = [parse_pod(d).metadata.name for d in load_documents(text)]
    assert names == ["sensor-hub", "web"]


@pytest.mark.parametrize("kind", ["List", "PodList"])
def test_list_contributes_its_items(kind: str) -> None:
    items = [minimal(), minimal() | {"metadata": {"name": "q"}}]
    text = yaml.safe_dump({"apiVersion": "v1", "kind": kind, "items": items})
    assert load_documents(text + "---\n" + FULL)[:2] == items
    assert len(load_documents(text + "---\n" + FULL)) == 3


def test_json_is_accepted() -> None:
    text = json.dumps(pod_to_manifest(FULL_POD), indent=4)
    assert parse_pod(load_documents(text, "pod.json")[0]) == FULL_POD


def test_timestamps_stay_strings() -> None:
    docs = load_documents("a: 2024-05-01T10:00:00Z\nb: 2024-13-45\n")
    assert docs == [{"a": "2024-05-01T10:00:00Z", "b": "2024-13-45"}]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "alpha"),
        ("x$(A)y$(B)z", "xalphaybetaz"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$alpha"),
        ("$$", "$"),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$()", "$()"),
        ("$(A", "$(A"),
        ("$A", "$A"),
        ("a$", "a$"),
        ("$", "$"),
        ("$(A)$(A)", "alphaalpha"),
        ("$(NESTED)", "$(A)"),
        ("$(A$(B))", "$(A$(B))"),
        ("100$ and $(€)", "100$ and euro"),
    ],
)
def test_expand_vars_like_the_kubelet(text: str, expected: str) -> None:
    env = {"A": "alpha", "B": "beta", "NESTED": "$(A)", "€": "euro"}
    assert expand_vars(text, env) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("metadata.name", ("metadata.name", None)),
        ("status.podIP", ("status.podIP", None)),
        ("metadata.labels['app']", ("metadata.labels", "app")),
        ("metadata.annotations['a.io/b']", ("metadata.annotations", "a.io/b")),
    ],
)
def test_split_field_path(path: str, expected: tuple[str, str | None]) -> None:
    assert split_field_path(path) == expected


@pytest.mark.parametrize("path", ["metadata.labels", "spec.nodeName['x']", "status.phase", ""])
def test_split_field_path_rejects_unsupported(path: str) -> None:
    with pytest.raises(ValueError, match="unsupported field path"):
        split_field_path(path)


def test_every_problem_is_reported_at_once() -> None:
    manifest = minimal(
        {
            "name": "App",
            "comand": ["x"],
            "ports": [{"containerPort": "http"}],
            "resources": {"limits": {"cpu": "lots"}},
        },
        volumes=[{"name": "data", "emptyDir": {}}],
        restartPolicy="always",
    )
    assert errors_of(manifest) == [
        "spec.volumes: not supported by florete-agent",
        'spec.containers[0].comand: unknown field, did you mean "command"?',
        "spec.containers[0].name: must be a lowercase RFC 1123 label (at most 63 characters: "
        "a-z, 0-9 and '-', starting and ending with a letter or digit), got \"App\"",
        "spec.containers[0].ports[0].containerPort: must be an integer between 1 and 65535, "
        'got "http"',
        "spec.containers[0].resources.limits[cpu]: must be a quantity such as 1, 0.5 or 500m "
        '(cores), got "lots"',
        'spec.restartPolicy: must be "Always", "OnFailure" or "Never", got "always"',
    ]
