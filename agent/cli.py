"""The ``florete-agent`` command line.

``run`` starts the daemon; every other command is a client of the daemon's local API (it never
opens the database). Output follows kubectl where the command has a kubectl twin. Exit codes:
0 ok, 1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import Config, load_config
from agent.errors import ApiError, FloreteError

Handler = Callable[[argparse.Namespace], int]
_PODS = ("pods", "pod", "po")
_NODES = ("nodes", "node", "no")


def _config(args: argparse.Namespace) -> Config:
    flags = {"config": args.config, "state_dir": args.state_dir, "api.socket": args.socket}
    for key in ("log.level", "node.name", "network.interfaces"):
        value = getattr(args, key.replace(".", "_"), None)
        if value is not None:
            flags[key] = value
    return load_config(flags)


def _client(args: argparse.Namespace) -> Any:
    from agent.apiclient import ApiClient

    return ApiClient(_config(args).api.socket, timeout=args.request_timeout)


def _pods_path(namespace: str | None) -> str:
    return "/api/v1/pods" if namespace is None else f"/api/v1/namespaces/{namespace}/pods"


def _dump(obj: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(obj, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False), end="")


# --- run --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """``florete-agent run``: the daemon in the foreground."""
    import asyncio

    from agent.daemon import run

    cfg = _config(args)
    _setup_logging(cfg.log.level, cfg.log.format)
    return asyncio.run(run(cfg))


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":

        class JsonFormatter(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return json.dumps(
                    {
                        "time": self.formatTime(record),
                        "level": record.levelname,
                        "logger": record.name,
                        "message": record.getMessage(),
                    }
                )

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# --- apply, get, describe, logs, delete ---------------------------------------------------------


def _read_sources(files: Sequence[str]) -> list[tuple[str, str]]:
    sources: list[tuple[str, str]] = []
    for name in files:
        if name == "-":
            sources.append(("-", sys.stdin.read()))
            continue
        path = Path(name)
        paths = (
            sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
            if path.is_dir()
            else [path]
        )
        for p in paths:
            try:
                sources.append((str(p), p.read_text()))
            except OSError as err:
                raise FloreteError(f"cannot read {p}: {err.strerror}") from err
    return sources


def cmd_apply(args: argparse.Namespace) -> int:
    """``apply -f FILE|DIR|-``: create pods, or update their labels and annotations.

    Every document is validated by the agent (dry run) before any is applied, so a rejected
    document changes nothing.
    """
    from agent.manifest_yaml import load_documents

    docs = [
        doc for source, text in _read_sources(args.filename) for doc in load_documents(text, source)
    ]
    client = _client(args)
    plans = []
    failed = False
    for doc in docs:
        meta = doc.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        name = str(meta.get("name", ""))
        namespace = str(meta.get("namespace") or args.namespace)
        path = f"{_pods_path(namespace)}/{name}"
        try:
            existing = client.request("GET", path) if name else None
        except ApiError as err:
            if err.status != 404:
                raise
            existing = None
        method, target = ("PUT", path) if existing else ("POST", _pods_path(namespace))
        try:
            client.request(method, target, body=doc, query={"dryRun": "All"})
        except ApiError as err:
            failed = True
            verb = "updating" if existing else "creating"
            print(
                f'Error from server ({err.api_reason}): error when {verb} pod "{name}": '
                f"{err.message}",
                file=sys.stderr,
            )
        plans.append((doc, name, method, target, existing))
    if failed:
        print("nothing was applied", file=sys.stderr)
        return 1
    for doc, name, method, target, existing in plans:
        result = client.request(method, target, body=doc)
        if existing is None:
            verb = "created"
        else:
            same = all(
                existing["metadata"].get(k) == result["metadata"].get(k)
                for k in ("labels", "annotations")
            )
            verb = "unchanged" if same else "configured"
        print(f"pod/{name} {verb}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    """``get pods|pod NAME|nodes [-o wide|json|yaml|name]``."""
    from agent import render

    client = _client(args)
    if args.resource in _NODES:
        nodes = client.request("GET", "/api/v1/nodes" + (f"/{args.name}" if args.name else ""))
        if args.output in ("json", "yaml"):
            _dump(nodes, args.output)
        else:
            print(render.nodes_table(nodes["items"] if "items" in nodes else [nodes]))
        return 0
    namespace = None if args.all_namespaces else args.namespace
    if args.name:
        pod = client.request("GET", f"{_pods_path(args.namespace)}/{args.name}")
        pods = [pod]
        if args.output in ("json", "yaml"):
            _dump(pod, args.output)
            return 0
    else:
        listing = client.request("GET", _pods_path(namespace))
        pods = listing["items"]
        if args.output in ("json", "yaml"):
            _dump(listing, args.output)
            return 0
    if args.output == "name":
        for pod in pods:
            print(f"pod/{pod['metadata']['name']}")
    elif not pods:
        where = "" if namespace is None else f" in {namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
    else:
        print(
            render.pods_table(pods, wide=args.output == "wide", all_namespaces=args.all_namespaces)
        )
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    """``describe pod NAME``: kubectl-style text with events."""
    from agent import render

    client = _client(args)
    pod = client.request("GET", f"{_pods_path(args.namespace)}/{args.name}")
    events = client.request(
        "GET",
        f"/api/v1/namespaces/{args.namespace}/events",
        query={"fieldSelector": f"involvedObject.name={args.name}"},
    )
    print(render.describe_pod(pod, events["items"]))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """``logs NAME [-c C] [-f] [--tail N] [--previous] [--timestamps] [--since-seconds N]``."""
    client = _client(args)
    query: dict[str, str] = {}
    if args.container:
        query["container"] = args.container
    if args.tail is not None and args.tail >= 0:
        query["tailLines"] = str(args.tail)
    for flag, key in (
        (args.follow, "follow"),
        (args.previous, "previous"),
        (args.timestamps, "timestamps"),
    ):
        if flag:
            query[key] = "true"
    if args.since_seconds is not None:
        query["sinceSeconds"] = str(args.since_seconds)
    path = f"{_pods_path(args.namespace)}/{args.name}/log"
    out = sys.stdout.buffer
    if args.follow:
        for chunk in client.stream(path, query):
            out.write(chunk)
            out.flush()
    else:
        out.write(client.request("GET", path, query=query) or b"")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``delete pod NAME... [--grace-period N] [--wait]``: waits until each pod is gone."""
    client = _client(args)
    query = {} if args.grace_period is None else {"gracePeriodSeconds": str(args.grace_period)}
    paths = []
    for name in args.names:
        path = f"{_pods_path(args.namespace)}/{name}"
        client.request("DELETE", path, query=query)
        paths.append((name, path))
    for name, path in paths:
        if args.wait:
            _wait_gone(client, path, args.timeout)
        print(f'pod "{name}" deleted')
    return 0


def _wait_gone(client: Any, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return
            raise
        time.sleep(0.1)
    raise FloreteError(f"timed out after {timeout:g} s waiting for {path} to be deleted")


# --- status, version ----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """``status``: identity, runtimes and pods of the running agent."""
    agent = _client(args).request("GET", "/apis/florete.io/v1alpha1/agent")
    if args.output in ("json", "yaml"):
        _dump(agent, args.output)
        return 0
    st = agent["status"]
    pods = ", ".join(f"{n} {phase}" for phase, n in sorted(st["pods"].items())) or "none"
    lines = [
        f"Node:         {st['name']}",
        f"Node ID:      {st['nodeID']}",
        f"Certificate:  sha256 {st['certificateSHA256']}",
        f"Version:      {st['version']}",
        f"Uptime:       {st['uptimeSeconds']:.0f} s (since {st['startedAt']})",
        f"State dir:    {st['stateDir']}",
        f"API socket:   {st['socket']}",
        f"Interfaces:   {', '.join(st['interfaces']) or '-'} (host IP {st['hostIP']})",
        f"Memory:       {st['rssBytes'] / 2**20:.1f} MiB RSS",
        f"Pods:         {pods}",
        "Runtimes:",
    ]
    for rt in st["runtimes"]:
        health = "healthy" if rt["healthy"] else "UNHEALTHY"
        lines.append(f"  {rt['name']:<10} {health:<9} {rt['description']}")
    print("\n".join(lines))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    """``version``: the client's version and, when reachable, the agent's."""
    print(f"Client Version: v{__version__}")
    if not args.client:
        try:
            info = _client(args).request("GET", "/version")
        except ApiError as err:
            print(f"Server: {err.message}", file=sys.stderr)
            return 1
        print(f"Server Version: {info['gitVersion']}")
    return 0


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="state directory (env FLORETE_STATE_DIR)")
    common.add_argument("--socket", help="API socket (default <state dir>/agent.sock)")
    common.add_argument("--config", help="TOML config file (env FLORETE_CONFIG)")
    common.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds to wait for the agent's answers (default 30)",
    )
    ns = argparse.ArgumentParser(add_help=False)
    ns.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")

    parser = argparse.ArgumentParser(
        prog="florete-agent",
        description="Node agent of a Florete edge cluster: runs Kubernetes Pods on this device.",
    )
    parser.add_argument("--version", action="version", version=f"florete-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", parents=[common], help="run the agent (foreground daemon)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--node-name", help="node name (default: the hostname)")
    p.add_argument(
        "--interfaces",
        dest="network_interfaces",
        help="comma-separated interfaces to use (env FLORETE_INTERFACES)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("apply", parents=[common, ns], help="create or update pods from manifests")
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        help="manifest file, directory, or - for stdin (repeatable)",
    )
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("get", parents=[common, ns], help="list pods or nodes")
    p.add_argument("resource", choices=[*_PODS, *_NODES])
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=["wide", "json", "yaml", "name"])
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("describe", parents=[common, ns], help="show a pod in detail, with events")
    p.add_argument("resource", choices=_PODS)
    p.add_argument("name")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("logs", parents=[common, ns], help="print a container's logs")
    p.add_argument("name")
    p.add_argument("-c", "--container")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument(
        "-p", "--previous", action="store_true", help="logs of the previous, terminated instance"
    )
    p.add_argument("--tail", type=int, help="lines from the end to show")
    p.add_argument("--timestamps", action="store_true")
    p.add_argument("--since-seconds", type=int, metavar="N")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("delete", parents=[common, ns], help="delete pods")
    p.add_argument("resource", choices=_PODS)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument(
        "--grace-period",
        type=int,
        metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL (default: the pod's)",
    )
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until the pods are gone (default)",
    )
    p.add_argument("--timeout", type=float, default=330.0, metavar="SECONDS")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("status", parents=[common], help="show this node's identity and health")
    p.add_argument("-o", "--output", choices=["json", "yaml"])
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("version", parents=[common], help="print client and agent versions")
    p.add_argument("--client", action="store_true", help="client version only")
    p.set_defaults(func=cmd_version)

    from agent.cli_kube import add_parsers as add_kube_parsers  # kubeconfig
    from agent.cli_links import add_parsers  # radio-sim, link test
    from agent.cli_mesh import add_parsers as add_mesh_parsers  # neighbours, links, peers
    from agent.cli_mqtt import add_parsers as add_mqtt_parsers  # bridges
    from agent.cli_pairing import add_parsers as add_pairing_parsers  # pair, unpair
    from agent.cli_supernode import add_parsers as add_supernode_parsers  # supernode
    from agent.tui.command import add_parsers as add_tui_parsers  # tui (Textual loads on use)

    add_parsers(sub)
    add_mesh_parsers(sub, common, _client)
    add_pairing_parsers(sub, common, _client)
    add_kube_parsers(sub, common, _client)
    add_mqtt_parsers(sub, common, _client)
    add_supernode_parsers(sub, common, _client)
    add_tui_parsers(sub, common, _config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``florete-agent`` command.

    Returns:
        The exit code: 0 ok, 1 failure, 2 usage (argparse exits with 2 itself).
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    try:
        return handler(args)
    except ApiError as err:
        prefix = f"Error from server ({err.api_reason})" if err.status else "error"
        print(f"{prefix}: {err.message}", file=sys.stderr)
    except FloreteError as err:
        print(f"error: {err.message}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
