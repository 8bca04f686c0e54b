"""Rejected manifests: one table row per rule, with the exact messages a user sees."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from agent.errors import ManifestError
from agent.manifest import parse_pod
from agent.manifest_yaml import load_documents

LABEL_RULE = (
    "must be a lowercase RFC 1123 label (at most 63 characters: a-z, 0-9 and '-', starting and "
    "ending with a letter or digit)"
)
SUBDOMAIN_RULE = (
    "must be a lowercase RFC 1123 subdomain (at most 253 characters: a-z, 0-9, '-' and '.', "
    "starting and ending with a letter or digit)"
)
ONE_HANDLER = "must have exactly one handler (exec, httpGet or tcpSocket)"
DEFAULT_TOLERATIONS = (
    "only the default tolerations are supported (key node.kubernetes.io/not-ready or "
    "node.kubernetes.io/unreachable, operator Exists, effect NoExecute)"
)
C0 = "spec.containers[0]"


def pod(container: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A valid pod with one container, with ``container`` and ``spec`` fields merged in."""
    app = {"name": "app", "image": "busybox"} | (container or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [app]} | spec,
    }


def with_metadata(**metadata: Any) -> dict[str, Any]:
    return pod() | {"metadata": {"name": "p"} | metadata}


def probe(**fields: Any) -> dict[str, Any]:
    return {"livenessProbe": fields}


BAD: list[tuple[str, Any, list[str]]] = [
    # --- apiVersion, kind, top level ---
    (
        "kind-deployment",
        pod() | {"kind": "Deployment"},
        ['kind: only "Pod" is supported, got "Deployment"'],
    ),
    (
        "apiversion-apps",
        pod() | {"apiVersion": "apps/v1"},
        ['apiVersion: only "v1" is supported, got "apps/v1"'],
    ),
    (
        "no-apiversion-no-kind",
        {"metadata": {"name": "p"}},
        ['apiVersion: required (must be "v1")', 'kind: required (must be "Pod")'],
    ),
    ("not-a-mapping", ["a"], ["a Pod must be a mapping, got a list"]),
    (
        "typo-top-level",
        {k: v for k, v in pod().items() if k != "metadata"} | {"metdata": {"name": "p"}},
        ['metdata: unknown field, did you mean "metadata"?', "metadata.name: required"],
    ),
    ("no-spec", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, ["spec: required"]),
    # --- metadata ---
    ("no-name", with_metadata(name=None), ["metadata.name: required"]),
    ("metadata-list", pod() | {"metadata": ["p"]}, ["metadata: must be a mapping, got a list"]),
    (
        "bad-pod-name",
        with_metadata(name="My_Pod"),
        [f'metadata.name: {SUBDOMAIN_RULE}, got "My_Pod"'],
    ),
    (
        "bad-namespace",
        with_metadata(namespace="Prod"),
        [f'metadata.namespace: {LABEL_RULE}, got "Prod"'],
    ),
    (
        "bad-label-key",
        with_metadata(labels={"bad key": "x"}),
        [
            "metadata.labels[bad key]: key must be [prefix/]name: a name of at most 63 characters "
            "(A-Z, a-z, 0-9, '-', '_' and '.', starting and ending with a letter or digit) after "
            'an optional lowercase DNS subdomain prefix, got "bad key"'
        ],
    ),
    (
        "bad-label-value",
        with_metadata(labels={"app": "-web"}),
        [
            "metadata.labels[app]: must be empty or at most 63 characters (A-Z, a-z, 0-9, '-', "
            "'_' and '.', starting and ending with a letter or digit), got \"-web\""
        ],
    ),
    (
        "label-value-number",
        with_metadata(labels={"version": 2}),
        ['metadata.labels[version]: must be a string, got 2 (quote it: "2")'],
    ),
    (
        "owner-references",
        with_metadata(ownerReferences=[{"kind": "ReplicaSet", "name": "rs"}]),
        ["metadata.ownerReferences: not supported by florete-agent"],
    ),
    # --- pod spec ---
    ("no-containers", pod(containers=[]), ["spec.containers: required (at least one container)"]),
    (
        "volumes",
        pod(volumes=[{"name": "data", "nfs": {"server": "nas"}}]),
        ["spec.volumes: not supported by florete-agent"],
    ),
    (
        "restart-policy",
        pod(restartPolicy="always"),
        ['spec.restartPolicy: must be "Always", "OnFailure" or "Never", got "always"'],
    ),
    (
        "negative-grace",
        pod(terminationGracePeriodSeconds=-1),
        ["spec.terminationGracePeriodSeconds: must be a non-negative integer, got -1"],
    ),
    (
        "host-network-string",
        pod(hostNetwork="yes"),
        ['spec.hostNetwork: must be true or false, got "yes"'],
    ),
    ("bad-node-name", pod(nodeName="Node_1"), [f'spec.nodeName: {SUBDOMAIN_RULE}, got "Node_1"']),
    (
        "scheduler",
        pod(schedulerName="my-scheduler"),
        ['spec.schedulerName: only "default-scheduler" is supported, got "my-scheduler"'],
    ),
    (
        "dns-policy",
        pod(dnsPolicy="None"),
        [
            'spec.dnsPolicy: only "ClusterFirst", "ClusterFirstWithHostNet" or "Default" is '
            'supported, got "None"'
        ],
    ),
    (
        "service-account",
        pod(serviceAccountName="robot"),
        ['spec.serviceAccountName: only "default" is supported, got "robot"'],
    ),
    ("priority", pod(priority=1000), ["spec.priority: only 0 is supported, got 1000"]),
    (
        "pod-security-context",
        pod(securityContext={"runAsUser": 1000}),
        ["spec.securityContext.runAsUser: not supported by florete-agent"],
    ),
    (
        "toleration",
        pod(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]),
        [f"spec.tolerations[0]: {DEFAULT_TOLERATIONS}"],
    ),
    # --- containers ---
    ("null-container", pod(containers=[None]), ["spec.containers[0]: must be a mapping, got null"]),
    ("no-container-name", pod({"name": None}), [f"{C0}.name: required"]),
    ("bad-container-name", pod({"name": "web.1"}), [f'{C0}.name: {LABEL_RULE}, got "web.1"']),
    (
        "duplicate-container-name",
        pod(initContainers=[{"name": "app", "command": ["true"]}]),
        [
            'spec.containers[0].name: duplicate container name "app" '
            "(also spec.initContainers[0].name)"
        ],
    ),
    ("typo", pod({"comand": ["sleep"]}), [f'{C0}.comand: unknown field, did you mean "command"?']),
    (
        "case-typo",
        pod({"ImagePullPolicy": "Always"}),
        [f'{C0}.ImagePullPolicy: unknown field, did you mean "imagePullPolicy"?'],
    ),
    ("nonsense-field", pod({"colour": "blue"}), [f"{C0}.colour: unknown field"]),
    (
        "volume-mounts",
        pod({"volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
        [f"{C0}.volumeMounts: not supported by florete-agent"],
    ),
    (
        "privileged",
        pod({"securityContext": {"privileged": True}}),
        [f"{C0}.securityContext.privileged: not supported by florete-agent"],
    ),
    (
        "allow-privilege-escalation",
        pod({"securityContext": {"allowPrivilegeEscalation": True, "privileged": False}}),
        [f"{C0}.securityContext.allowPrivilegeEscalation: not supported by florete-agent"],
    ),
    (
        "run-as-user-negative",
        pod({"securityContext": {"runAsUser": -1}}),
        [f"{C0}.securityContext.runAsUser: must be an integer between 0 and 2147483647, got -1"],
    ),
    (
        "run-as-group-string",
        pod({"securityContext": {"runAsGroup": "1000"}}),
        [
            f"{C0}.securityContext.runAsGroup: "
            'must be an integer between 0 and 2147483647, got "1000"'
        ],
    ),
    (
        "read-only-root-string",
        pod({"securityContext": {"readOnlyRootFilesystem": "yes"}}),
        [f'{C0}.securityContext.readOnlyRootFilesystem: must be true or false, got "yes"'],
    ),
    (
        "run-as-non-root",
        pod({"securityContext": {"runAsNonRoot": True}}),
        [f"{C0}.securityContext.runAsNonRoot: not supported by florete-agent"],
    ),
    (
        "security-context-typo",
        pod({"securityContext": {"runAsUSer": 1}}),
        [f'{C0}.securityContext.runAsUSer: unknown field, did you mean "runAsUser"?'],
    ),
    (
        "lifecycle",
        pod({"lifecycle": {"preStop": {"exec": {"command": ["x"]}}}}),
        [f"{C0}.lifecycle: not supported by florete-agent"],
    ),
    (
        "termination-message-policy",
        pod({"terminationMessagePolicy": "FallbackToLogsOnError"}),
        [f'{C0}.terminationMessagePolicy: only "File" is supported, got "FallbackToLogsOnError"'],
    ),
    (
        "empty-image",
        pod({"image": ""}),
        [
            f"{C0}.image: must not be empty or have surrounding spaces "
            "(omit image for a host process)"
        ],
    ),
    (
        "pull-policy",
        pod({"imagePullPolicy": "always"}),
        [f'{C0}.imagePullPolicy: must be "Always", "IfNotPresent" or "Never", got "always"'],
    ),
    (
        "pull-policy-without-image",
        pod({"image": None, "imagePullPolicy": "Never"}),
        [f"{C0}.imagePullPolicy: may only be set together with image"],
    ),
    (
        "command-string",
        pod({"command": "sleep 10"}),
        [f'{C0}.command: must be a list, got "sleep 10"'],
    ),
    (
        "args-number",
        pod({"args": ["--port", 8080]}),
        [f'{C0}.args[1]: must be a string, got 8080 (quote it: "8080")'],
    ),
    # --- env ---
    (
        "env-name",
        pod({"env": [{"name": "1X", "value": "v"}]}),
        [
            f"{C0}.env[0].name: must consist of letters, digits, '-', '_' and '.', must not start "
            "with a digit and must not be '.' or start with '..', got \"1X\""
        ],
    ),
    (
        "env-secret",
        pod({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
        [f"{C0}.env[0].valueFrom.secretKeyRef: not supported by florete-agent"],
    ),
    (
        "env-value-and-value-from",
        pod(
            {
                "env": [
                    {
                        "name": "X",
                        "value": "v",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                    }
                ]
            }
        ),
        [f"{C0}.env[0].valueFrom: may not be set when value is not empty"],
    ),
    (
        "env-field-path",
        pod(
            {
                "env": [
                    {
                        "name": "X",
                        "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}},
                    }
                ]
            }
        ),
        [
            f"{C0}.env[0].valueFrom.fieldRef.fieldPath: unsupported field path "
            "'spec.serviceAccountName'; supported: metadata.name, metadata.namespace, "
            "metadata.uid, spec.nodeName, status.hostIP, status.podIP, "
            "metadata.annotations['<key>'], metadata.labels['<key>']"
        ],
    ),
    (
        "env-label-key",
        pod(
            {
                "env": [
                    {
                        "name": "X",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['a b']"}},
                    }
                ]
            }
        ),
        [
            f"{C0}.env[0].valueFrom.fieldRef.fieldPath: key must be [prefix/]name: a name of at "
            "most 63 characters (A-Z, a-z, 0-9, '-', '_' and '.', starting and ending with a "
            'letter or digit) after an optional lowercase DNS subdomain prefix, got "a b"'
        ],
    ),
    (
        "service-links-string",
        pod(enableServiceLinks="true"),
        ['spec.enableServiceLinks: only true or false is supported, got "true"'],
    ),
    (
        "command-bool",
        pod({"command": ["test", True]}),
        [f"{C0}.command[1]: must be a string, got true (quote it in YAML)"],
    ),
    (
        "env-empty-value-from",
        pod({"env": [{"name": "X", "valueFrom": {}}]}),
        [f"{C0}.env[0].valueFrom: must set fieldRef"],
    ),
    # --- ports ---
    (
        "port-name-as-number",
        pod({"ports": [{"containerPort": "http"}]}),
        [f'{C0}.ports[0].containerPort: must be an integer between 1 and 65535, got "http"'],
    ),
    (
        "port-out-of-range",
        pod({"ports": [{"containerPort": 70000}]}),
        [f"{C0}.ports[0].containerPort: must be an integer between 1 and 65535, got 70000"],
    ),
    (
        "port-missing",
        pod({"ports": [{"name": "http"}]}),
        [f"{C0}.ports[0].containerPort: required"],
    ),
    (
        "port-name-invalid",
        pod({"ports": [{"containerPort": 80, "name": "http-server-main"}]}),
        [
            f"{C0}.ports[0].name: must be an IANA service name (at most 15 characters: a-z, 0-9 "
            "and '-', with at least one letter and no leading, trailing or double '-'), got "
            '"http-server-main"'
        ],
    ),
    (
        "port-name-duplicate",
        pod(
            {"ports": [{"containerPort": 80, "name": "web"}, {"containerPort": 81, "name": "web"}]}
        ),
        [f'{C0}.ports[1].name: duplicate port name "web" (also {C0}.ports[0].name)'],
    ),
    (
        "protocol",
        pod({"ports": [{"containerPort": 80, "protocol": "tcp"}]}),
        [f'{C0}.ports[0].protocol: must be "TCP", "UDP" or "SCTP", got "tcp"'],
    ),
    (
        "host-ip",
        pod({"ports": [{"containerPort": 80, "hostPort": 80, "hostIP": "localhost"}]}),
        [f'{C0}.ports[0].hostIP: must be an IPv4 or IPv6 address, got "localhost"'],
    ),
    (
        "host-port-false",
        pod({"ports": [{"containerPort": 80, "hostPort": False}]}),
        [f"{C0}.ports[0].hostPort: must be an integer between 1 and 65535, got false"],
    ),
    (
        "host-network-host-port",
        pod({"ports": [{"containerPort": 80, "hostPort": 8080}]}, hostNetwork=True),
        [f"{C0}.ports[0].hostPort: must equal containerPort (80) when hostNetwork is true"],
    ),
    (
        "host-port-conflict",
        pod(hostNetwork=True)
        | {
            "spec": {
                "hostNetwork": True,
                "containers": [
                    {"name": "a", "ports": [{"containerPort": 80}]},
                    {"name": "b", "ports": [{"containerPort": 80}]},
                ],
            }
        },
        [
            "spec.containers[1].ports[0].hostPort: duplicate host port 80/TCP "
            "(also spec.containers[0].ports[0].hostPort)"
        ],
    ),
    # --- resources ---
    (
        "gpu",
        pod({"resources": {"limits": {"nvidia.com/gpu": 1}}}),
        [f"{C0}.resources.limits[nvidia.com/gpu]: not supported by florete-agent"],
    ),
    (
        "bad-cpu",
        pod({"resources": {"limits": {"cpu": "1.5 cores"}}}),
        [
            f"{C0}.resources.limits[cpu]: must be a quantity such as 1, 0.5 or 500m (cores), "
            'got "1.5 cores"'
        ],
    ),
    (
        "memory-millis",
        pod({"resources": {"requests": {"memory": "256m"}}}),
        [
            f'{C0}.resources.requests[memory]: "256m" means 256 thousandths of a byte; write '
            "256Mi (mebibytes) or 256M (megabytes)"
        ],
    ),
    (
        "negative-memory",
        pod({"resources": {"limits": {"memory": "-1Gi"}}}),
        [f'{C0}.resources.limits[memory]: must not be negative, got "-1Gi"'],
    ),
    (
        "requests-over-limits",
        pod(
            {
                "resources": {
                    "limits": {"memory": "1Gi", "cpu": 1},
                    "requests": {"memory": "2Gi", "cpu": "1500m"},
                }
            }
        ),
        [
            f"{C0}.resources.requests[cpu]: must be less than or equal to the cpu limit (1), "
            "got 1500m",
            f"{C0}.resources.requests[memory]: must be less than or equal to the memory limit "
            "(1Gi), got 2Gi",
        ],
    ),
    (
        "resource-claims",
        pod({"resources": {"claims": [{"name": "gpu"}]}}),
        [f"{C0}.resources.claims: not supported by florete-agent"],
    ),
    # --- probes ---
    (
        "two-handlers",
        pod(probe(exec={"command": ["true"]}, tcpSocket={"port": 80})),
        [f"{C0}.livenessProbe: {ONE_HANDLER}, got exec and tcpSocket"],
    ),
    ("no-handler", pod(probe(periodSeconds=5)), [f"{C0}.livenessProbe: {ONE_HANDLER}, got none"]),
    (
        "grpc",
        pod(probe(grpc={"port": 9000})),
        [f"{C0}.livenessProbe.grpc: not supported by florete-agent"],
    ),
    (
        "unknown-named-port",
        pod({"ports": [{"containerPort": 80, "name": "web"}]} | probe(httpGet={"port": "http"})),
        [f'{C0}.livenessProbe.httpGet.port: no port named "http" in this container\'s ports'],
    ),
    (
        "probe-port-missing",
        pod(probe(tcpSocket={})),
        [f"{C0}.livenessProbe.tcpSocket.port: required"],
    ),
    (
        "liveness-success-threshold",
        pod(probe(exec={"command": ["true"]}, successThreshold=2)),
        [f"{C0}.livenessProbe.successThreshold: must be 1 for a livenessProbe, got 2"],
    ),
    (
        "zero-period",
        pod(probe(exec={"command": ["true"]}, periodSeconds=0)),
        [f"{C0}.livenessProbe.periodSeconds: must be a positive integer, got 0"],
    ),
    (
        "negative-delay",
        pod(probe(exec={"command": ["true"]}, initialDelaySeconds=-5)),
        [f"{C0}.livenessProbe.initialDelaySeconds: must be a non-negative integer, got -5"],
    ),
    (
        "empty-exec",
        pod(probe(exec={"command": []})),
        [f"{C0}.livenessProbe.exec.command: required (at least one item)"],
    ),
    (
        "scheme",
        pod(probe(httpGet={"port": 80, "scheme": "https"})),
        [f'{C0}.livenessProbe.httpGet.scheme: must be "HTTP" or "HTTPS", got "https"'],
    ),
    (
        "header-name",
        pod(probe(httpGet={"port": 80, "httpHeaders": [{"name": "X Probe", "value": "1"}]})),
        [
            f"{C0}.livenessProbe.httpGet.httpHeaders[0].name: must consist of letters, digits "
            "and '-', got \"X Probe\""
        ],
    ),
    (
        "readiness-grace",
        pod({"readinessProbe": {"tcpSocket": {"port": 80}, "terminationGracePeriodSeconds": 5}}),
        [
            f"{C0}.readinessProbe.terminationGracePeriodSeconds: "
            "must not be set for a readinessProbe"
        ],
    ),
    (
        "init-container-probe",
        pod(
            initContainers=[
                {
                    "name": "init",
                    "command": ["true"],
                    "readinessProbe": {"exec": {"command": ["true"]}},
                }
            ]
        ),
        ["spec.initContainers[0].readinessProbe: may not be set for init containers"],
    ),
]


@pytest.mark.parametrize(
    ("manifest", "expected"), [case[1:] for case in BAD], ids=[c[0] for c in BAD]
)
def test_bad_manifest_is_rejected_with_exact_messages(manifest: Any, expected: list[str]) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_pod(manifest)
    assert caught.value.errors == expected
    assert caught.value.code == "manifest_invalid"


def test_table_is_large_and_ids_unique() -> None:
    ids = [case[0] for case in BAD]
    assert len(ids) >= 30
    assert len(set(ids)) == len(ids)


# libyaml and the pure-Python parser word the same syntax error differently.
UNCLOSED = (
    "did not find expected ',' or ']'"
    if yaml.__with_libyaml__
    else "expected ',' or ']', but got '<stream end>'"
)

BAD_TEXT: list[tuple[str, str, list[str]]] = [
    ("unclosed-flow", "a: 1\nb: [1, 2\n", [f"pod.yaml:3:1: {UNCLOSED}"]),
    ("duplicate-key", "kind: Pod\nspec: {}\nkind: Pod\n", ['pod.yaml:3:1: duplicate key "kind"']),
    (
        "nested-duplicate-key",
        "spec:\n  containers:\n  - name: a\n    image: x\n    image: y\n",
        ['pod.yaml:5:5: duplicate key "image"'],
    ),
    ("control-character", "a: 1\nb: x\x07y\n", ["pod.yaml:2:5: unacceptable character #x0007"]),
    (
        "not-mappings",
        "- a\n---\n---\nplain\n---\na: 1\n",
        [
            "pod.yaml: document 1: must be a mapping (a Kubernetes object), got a list",
            'pod.yaml: document 3: must be a mapping (a Kubernetes object), got "plain"',
        ],
    ),
    (
        "list-items",
        "kind: List\nitems: [{a: 1}, 2]\n---\nkind: List\nitems: {a: 1}\n",
        [
            "pod.yaml: document 1: items[1]: must be a mapping, got 2",
            "pod.yaml: document 2: items: must be a list, got a mapping",
        ],
    ),
    ("huge-integer", "a: " + "9" * 5000 + "\n", [f'pod.yaml:1:4: invalid int "{"9" * 57}..."']),
    ("bad-tagged-bool", "a: !!bool maybe\n", ['pod.yaml:1:4: invalid bool "maybe"']),
    ("too-deep", "[" * 200_000 + "]" * 200_000, ["pod.yaml:1:101: nested deeper than 100 levels"]),
    (
        "too-deep-block",
        "a:\n" + "- " * 150 + "x\n",
        ["pod.yaml:2:199: nested deeper than 100 levels"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [case[1:] for case in BAD_TEXT], ids=[c[0] for c in BAD_TEXT]
)
def test_bad_text_is_rejected_with_position(text: str, expected: list[str]) -> None:
    with pytest.raises(ManifestError) as caught:
        load_documents(text, "pod.yaml")
    assert caught.value.errors == expected
