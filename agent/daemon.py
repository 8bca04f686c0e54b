"""``florete-agent run``: the daemon, started and stopped in a fixed order.

Start: lock the state dir, load or create the identity, open the store, fingerprint the runtimes,
re-attach to every stored pod, serve the API; only then report ready (log line and ``sd_notify``
``READY=1``). Stop on SIGTERM or SIGINT: close the API, detach from the pods (their workloads keep
running: upgrading or restarting the agent never stops a workload), close the runtimes and the
store, all bounded by ``reconciler.shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from agent.api import AgentInfo, Api
from agent.api_mesh import MeshApi
from agent.api_mqtt import MqttApi
from agent.api_pairing import PairingApi
from agent.api_pki import ApiPki
from agent.api_supernode import SupernodeApi
from agent.config import Config, resolve_interfaces
from agent.discovery import Discovery
from agent.errors import ConfigError, FloreteError
from agent.httpserver import HttpServer
from agent.identity import Identity, load_or_create_identity
from agent.mesh import Mesh
from agent.neighbours import NeighbourTable, TrustState
from agent.pairing.service import PairingService, PairingSettings
from agent.podworker import BackoffSettings
from agent.reconciler import NodeSettings, Reconciler
from agent.runtimes import RuntimeRegistry
from agent.store import Store
from agent.trust import TrustStore
from supernode import Supernode

if TYPE_CHECKING:
    from agent.mqtt.bridge import Bridge

log = logging.getLogger(__name__)


def sd_notify(state: str) -> bool:
    """Send a state line to systemd's notification socket (``sd_notify(3)``).

    Args:
        state: e.g. ``"READY=1"`` or ``"STOPPING=1"``.

    Returns:
        True when ``NOTIFY_SOCKET`` is set and the datagram was sent.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as err:
            log.warning("sd_notify to %s failed: %s", os.environ["NOTIFY_SOCKET"], err)
            return False
    return True


def host_address(interfaces: tuple[str, ...]) -> str:
    """Return the first IPv4 address of the given interfaces (``127.0.0.1`` if none has one)."""
    addresses = psutil.net_if_addrs()
    for name in interfaces:
        for addr in addresses.get(name, []):
            if addr.family == socket.AF_INET:
                return str(addr.address)
    return "127.0.0.1"


def lock_state_dir(state_dir: Path) -> int:
    """Take the state dir's lock so that one agent at a time uses it.

    Returns:
        The lock file's descriptor (held open for the daemon's life).

    Raises:
        ConfigError: another agent holds the lock.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another florete-agent is running with state dir {state_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _trust_state(trust: TrustStore) -> Callable[[str], TrustState]:
    def state(node_id: str) -> TrustState:
        peer = trust.get(node_id)
        if peer is None:
            return "untrusted"
        return "trusted" if peer.state == "trusted" else "revoked"

    return state


async def _start_discovery(
    cfg: Config, identity: Identity, mesh: Mesh, runtimes: RuntimeRegistry
) -> Discovery | None:
    """Announce and browse with mDNS; a failure is logged, the agent goes on without it."""
    if not (cfg.links.mdns and mesh.ip_links):
        return None
    healthy = [name for name, fp in (await runtimes.fingerprints()).items() if fp.healthy]
    links = ["udp"] + (["wifi"] if mesh.wifi else []) + (["serial"] if mesh.radios else [])
    discovery = Discovery(
        identity.node_id,
        identity.name,
        identity.fingerprint,
        mesh.udp_port,
        {"rt": "+".join(healthy), "ln": "+".join(links)},
        mesh.interfaces,
        mesh.table,
        link_name=mesh.link_name,
    )
    try:
        await discovery.start()
    except (FloreteError, OSError) as err:
        log.warning("mDNS discovery is off: %s", err)
        await discovery.aclose()
        return None
    return discovery


async def _stop_discovery(task: asyncio.Task[Discovery | None] | None) -> None:
    """Send the mDNS goodbye (or stop a discovery still starting)."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        discovery = await task
        if discovery is not None:
            await discovery.aclose()


async def _start_bridge(
    cfg: Config, identity: Identity, store: Store, mesh: Mesh, trust: TrustStore
) -> Bridge | None:
    """The MQTT bridge, started, when ``mqtt.broker`` is set (only then is paho-mqtt loaded)."""
    if cfg.mqtt.broker is None:
        return None
    from agent.mqtt import Bridge

    bridge = Bridge(cfg.mqtt, identity=identity, store=store, mesh=mesh, trust=trust)
    await bridge.start()
    return bridge


async def run(cfg: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT.

    Returns:
        The process exit code (0 after a clean stop).

    Raises:
        ConfigError: the configuration cannot be served (state dir locked, socket in use).
    """
    started_at = time.time()
    lock_fd = lock_state_dir(cfg.state_dir)
    identity = load_or_create_identity(cfg.state_dir, cfg.node.name)
    interfaces = resolve_interfaces(cfg)
    host_ip = host_address(interfaces)
    store = Store(cfg.state_dir / "agent.db")
    runtimes = RuntimeRegistry(cfg.state_dir, identity.name, cfg.runtimes, store=store)
    await runtimes.fingerprints()
    reconciler = Reconciler(
        store,
        runtimes,
        NodeSettings(identity.name, host_ip, cfg.state_dir, cfg.runtime.default),
        BackoffSettings(
            cfg.reconciler.backoff_initial, cfg.reconciler.backoff_max, cfg.reconciler.backoff_reset
        ),
    )
    info = AgentInfo(
        identity, str(cfg.state_dir), str(cfg.api.socket), interfaces, host_ip, started_at
    )
    trust = TrustStore(store)
    table = NeighbourTable(identity.node_id, _trust_state(trust))
    mesh = Mesh(cfg.links, interfaces, identity, trust, table)
    mesh_api = MeshApi(mesh, table, trust, identity)
    pairing_settings = PairingSettings(cfg.pairing.code_ttl, cfg.pairing.max_failures)
    pairing = PairingService(identity, trust, mesh, table, store, pairing_settings)
    mesh_api.peer_addresses = pairing.addresses
    pki = ApiPki.load_or_create(cfg.state_dir / "api-pki", identity) if cfg.api.listen else None
    mqtt_api = MqttApi()
    supernode = Supernode(
        mesh, reconciler, runtimes, identity, cfg.state_dir, cfg.node.labels, cfg.runtime.default
    )
    supernode_api = SupernodeApi(supernode)
    pairing.supernode_name = lambda: supernode.name  # pair --supernode; invitations when paired
    routes = [*mesh_api.routes(), *PairingApi(pairing).routes(), *mqtt_api.routes()]
    api = Api(reconciler, runtimes, info, [*routes, *supernode_api.routes()], pki)
    api.wrap_route = supernode_api.wrap
    bridge: Bridge | None = None
    server = HttpServer(api.router())
    discovery: asyncio.Task[Discovery | None] | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            await reconciler.start(group, hold=supernode.holds)
            group.create_task(runtimes.watch_remote(stop))
            await mesh.start()
            await supernode.start()
            pairing.start()
            mqtt_api.bridge = bridge = await _start_bridge(cfg, identity, store, mesh, trust)
            discovery = asyncio.create_task(_start_discovery(cfg, identity, mesh, runtimes))
            discovery.add_done_callback(pairing.discovery_started)
            await server.start_unix(cfg.api.socket, cfg.api.socket_mode, cfg.api.socket_group)
            if cfg.api.listen:
                host, _, port = cfg.api.listen.rpartition(":")
                assert pki is not None
                context = pki.server_context(identity, cfg.api.tls_client_ca)
                api.kube.tcp_address = await server.start_tcp(host.strip("[]"), int(port), context)
            log.info(
                "ready in %.3f s: node %s (%s), state dir %s, socket %s",
                time.time() - started_at,
                identity.name,
                identity.node_id,
                cfg.state_dir,
                cfg.api.socket,
            )
            sd_notify(f"READY=1\nSTATUS=serving on {cfg.api.socket}\nMAINPID={os.getpid()}")
            await stop.wait()
            sd_notify("STOPPING=1")
            log.info("stopping")
            try:
                async with asyncio.timeout(cfg.reconciler.shutdown_timeout):
                    await pairing.stop()
                    if bridge is not None:
                        await bridge.stop()
                    await _stop_discovery(discovery)
                    await supernode.stop()
                    await mesh.stop()
                    await server.close(cfg.reconciler.shutdown_timeout / 2)
                    await reconciler.stop()
            except TimeoutError:
                log.warning(
                    "shutdown took longer than %.1f s; leaving the rest",
                    cfg.reconciler.shutdown_timeout,
                )
                await reconciler.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await supernode.stop()
        await mesh.stop()
        await runtimes.close()
        store.close()
        os.close(lock_fd)
    log.info("stopped; workloads keep running")
    return 0
