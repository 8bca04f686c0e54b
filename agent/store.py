"""The agent's local state: one SQLite database in the state dir.

Holds the desired pods (the manifests the user applied), the last known status of each pod, the
handles of the tasks the runtimes started, and the pods' events. Desired state (pods created,
changed, deleted) is committed with ``synchronous=FULL`` in WAL mode, so a write the user was
told succeeded survives power loss, and the agent restarts every desired pod from here after a
reboot with no network at all. Observed state (status, events, task records) is committed with
``synchronous=NORMAL``: it survives a crash of the agent, costs no fsync on a pod's start path,
and after a power cut it is observed again anyway.

All methods are synchronous and fast (one small transaction each); the daemon calls them from its
event loop. Only the daemon opens the database: the CLI and TUI go through the API.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.errors import AlreadyExistsError, NotFoundError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pods (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL UNIQUE,
    manifest TEXT NOT NULL,
    created_at REAL NOT NULL,
    resource_version INTEGER NOT NULL,
    deletion_at REAL,
    deletion_grace REAL,
    status TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS tasks (
    pod_uid TEXT NOT NULL,
    container TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    runtime TEXT NOT NULL,
    handle TEXT,
    PRIMARY KEY (pod_uid, container, attempt)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pod_uid TEXT NOT NULL,
    namespace TEXT NOT NULL,
    pod TEXT NOT NULL,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_pod ON events (pod_uid, id);
CREATE TABLE IF NOT EXISTS peers (
    node_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    certificate BLOB NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('trusted', 'revoked')),
    added_at REAL NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mqtt_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    peer TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    size INTEGER NOT NULL,
    queued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mqtt_outbox_by_peer ON mqtt_outbox (peer, seq);
CREATE TABLE IF NOT EXISTS mqtt_counters (
    peer TEXT PRIMARY KEY,
    delivered INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS mqtt_inbound (
    origin TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mqtt_peer_routes (
    peer TEXT NOT NULL,
    filter TEXT NOT NULL,
    strip TEXT NOT NULL,
    prefix TEXT NOT NULL,
    qos INTEGER NOT NULL,
    PRIMARY KEY (peer, filter, strip, prefix)
);
"""

#: Events kept per pod; older ones are deleted when a new one is recorded.
MAX_EVENTS_PER_POD = 100


@dataclass(frozen=True)
class StoredPod:
    """One desired pod as stored.

    Attributes:
        namespace: namespace.
        name: name.
        uid: uid the agent gave it at creation (UUID4 string).
        manifest: the validated manifest as a Kubernetes-shaped dict (without status).
        created_at: creation time, seconds since the epoch.
        resource_version: store-wide version of the last change to this pod.
        deletion_at: when deletion was requested (seconds since the epoch), or None.
        deletion_grace: grace period of the requested deletion in seconds, or None.
        status: last recorded Kubernetes ``PodStatus`` dict.
    """

    namespace: str
    name: str
    uid: str
    manifest: dict[str, Any]
    created_at: float
    resource_version: int
    deletion_at: float | None
    deletion_grace: float | None
    status: dict[str, Any]


@dataclass(frozen=True)
class StoredTask:
    """A task the agent started (or was about to start) for one container attempt.

    Attributes:
        pod_uid: uid of the pod.
        container: container name.
        attempt: 0 for the first start, then one more for each restart.
        task_id: the ``TaskSpec.task_id``.
        runtime: runtime name.
        handle: the persisted ``TaskHandle`` JSON, or None when the agent stopped between
            recording the intent and the runtime returning the handle.
    """

    pod_uid: str
    container: str
    attempt: int
    task_id: str
    runtime: str
    handle: str | None


@dataclass(frozen=True)
class StoredEvent:
    """A Kubernetes-style event about a pod (repeats are folded into ``count``)."""

    namespace: str
    pod: str
    pod_uid: str
    type: str
    reason: str
    message: str
    count: int
    first_at: float
    last_at: float


@dataclass(frozen=True)
class StoredPeer:
    """A peer node in the trust store (see :mod:`agent.trust`).

    Attributes:
        node_id: the peer's node ID in display form (derived from ``certificate``).
        name: its human name (the certificate's CN unless given otherwise).
        certificate: its self-signed certificate, DER bytes.
        fingerprint: SHA-256 of ``certificate`` as ``agent.identity.certificate_fingerprint``
            formats it.
        state: ``"trusted"`` or ``"revoked"``.
        added_at: when it was added or last re-trusted, seconds since the epoch.
        source: how it came to be trusted: ``"manual"``, ``"pairing"`` or ``"supernode:NAME"``
            (vouched for by a member of supernode NAME; see :mod:`supernode.vouching`).
    """

    node_id: str
    name: str
    certificate: bytes
    fingerprint: str
    state: str
    added_at: float
    source: str


PodListener = Callable[[str, "StoredPod"], None]
"""Called as ``(change, pod)`` after a pod change is committed; ``change`` is ``ADDED``,
``MODIFIED`` or ``DELETED`` (with the pod's last state and the version of its removal)."""

_PEER_COLUMNS = "node_id, name, certificate, fingerprint, state, added_at, source"

_POD_COLUMNS = (
    "namespace, name, uid, manifest, created_at, resource_version, deletion_at, deletion_grace, "
    "status"
)


def _pod_from_row(row: tuple[Any, ...]) -> StoredPod:
    return StoredPod(
        namespace=row[0],
        name=row[1],
        uid=row[2],
        manifest=json.loads(row[3]),
        created_at=row[4],
        resource_version=row[5],
        deletion_at=row[6],
        deletion_grace=row[7],
        status=json.loads(row[8]),
    )


class Store:
    """The agent's SQLite database.

    Args:
        path: database file (created with its directory; mode 0600).

    Raises:
        sqlite3.Error: the file is not a database or cannot be opened.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600, exist_ok=True)
        self.path = path
        self._pod_listeners: list[PodListener] = []
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._durable = True
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('resource_version', '0')")

    def close(self) -> None:
        """Close the database (checkpointing the WAL)."""
        with self._lock:
            self._db.close()

    def transaction(self, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction for a feature that keeps its own tables here (the MQTT
        outbox, ``mqtt_*``); see :meth:`_tx` for ``durable``. Safe from any thread."""
        return self._tx(durable)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only statement and return its rows (safe from any thread)."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction.

        Args:
            durable: commit with ``synchronous=FULL`` (the WAL is fsynced: the write survives a
                power loss). Non-durable commits (status, events, task records) survive a crash
                of the agent but may be lost with the last seconds before a power cut; they cost
                no fsync, and the next durable commit makes them durable too.
        """
        with self._lock:
            if durable != self._durable:
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add_pod_listener(self, listener: PodListener) -> None:
        """Call ``listener`` after every committed pod change (watch streams use this).

        Listeners run in the thread that made the change (the daemon's event loop) and must
        not raise; they must not write to the store either.
        """
        self._pod_listeners.append(listener)

    def _notify(self, change: str, pod: StoredPod) -> None:
        for listener in self._pod_listeners:
            listener(change, pod)

    def resource_version(self) -> int:
        """The store-wide version counter: the version of the latest change."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = 'resource_version'"
            ).fetchone()
        return int(row[0])

    def _next_version(self, db: sqlite3.Connection) -> int:
        row = db.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'resource_version' "
            "RETURNING value"
        ).fetchone()
        return int(row[0])

    # --- pods ---------------------------------------------------------------------------------

    def create_pod(
        self, namespace: str, name: str, uid: str, manifest: dict[str, Any]
    ) -> StoredPod:
        """Record a new desired pod.

        Raises:
            AlreadyExistsError: a pod with this namespace and name exists.
        """
        now = time.time()
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM pods WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone():
                raise AlreadyExistsError(f'pods "{name}" already exists')
            version = self._next_version(db)
            db.execute(
                "INSERT INTO pods (namespace, name, uid, manifest, created_at, resource_version) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (namespace, name, uid, json.dumps(manifest), now, version),
            )
        pod = self.get_pod(namespace, name)
        self._notify("ADDED", pod)
        return pod

    def update_manifest(self, namespace: str, name: str, manifest: dict[str, Any]) -> StoredPod:
        """Replace a pod's manifest (metadata changes; the caller checked the spec is unchanged).

        Raises:
            NotFoundError: no such pod.
        """
        with self._tx() as db:
            version = self._next_version(db)
            cursor = db.execute(
                "UPDATE pods SET manifest = ?, resource_version = ? "
                "WHERE namespace = ? AND name = ?",
                (json.dumps(manifest), version, namespace, name),
            )
            if cursor.rowcount == 0:
                raise NotFoundError(f'pods "{name}" not found')
        pod = self.get_pod(namespace, name)
        self._notify("MODIFIED", pod)
        return pod

    def get_pod(self, namespace: str, name: str) -> StoredPod:
        """Return one pod.

        Raises:
            NotFoundError: no such pod.
        """
        with self._lock:
            row = self._db.execute(
                f"SELECT {_POD_COLUMNS} FROM pods WHERE namespace = ? AND name = ?",
                (namespace, name),
            ).fetchone()
        if row is None:
            raise NotFoundError(f'pods "{name}" not found')
        return _pod_from_row(row)

    def pod_by_uid(self, uid: str) -> StoredPod | None:
        """Return the pod with this uid, or None when there is none."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_POD_COLUMNS} FROM pods WHERE uid = ?", (uid,)
            ).fetchone()
        return None if row is None else _pod_from_row(row)

    def list_pods(self, namespace: str | None = None) -> list[StoredPod]:
        """Return pods ordered by namespace and name; all namespaces when ``namespace`` is None."""
        query = f"SELECT {_POD_COLUMNS} FROM pods"
        params: tuple[str, ...] = ()
        if namespace is not None:
            query += " WHERE namespace = ?"
            params = (namespace,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY namespace, name", params).fetchall()
        return [_pod_from_row(row) for row in rows]

    def save_status(self, uid: str, status: dict[str, Any]) -> None:
        """Record a pod's latest status (a no-op when the pod is gone)."""
        with self._tx(durable=False) as db:
            version = self._next_version(db)
            db.execute(
                "UPDATE pods SET status = ?, resource_version = ? WHERE uid = ?",
                (json.dumps(status), version, uid),
            )
        if self._pod_listeners and (pod := self.pod_by_uid(uid)) is not None:
            self._notify("MODIFIED", pod)

    def mark_deleted(self, namespace: str, name: str, grace: float) -> StoredPod:
        """Record that deletion was requested, keeping the earliest request's time and grace.

        Raises:
            NotFoundError: no such pod.
        """
        with self._tx() as db:
            version = self._next_version(db)
            cursor = db.execute(
                "UPDATE pods SET deletion_at = COALESCE(deletion_at, ?), "
                "deletion_grace = MIN(COALESCE(deletion_grace, ?), ?), resource_version = ? "
                "WHERE namespace = ? AND name = ?",
                (time.time(), grace, grace, version, namespace, name),
            )
            if cursor.rowcount == 0:
                raise NotFoundError(f'pods "{name}" not found')
        pod = self.get_pod(namespace, name)
        self._notify("MODIFIED", pod)
        return pod

    def remove_pod(self, uid: str) -> None:
        """Forget a pod with its tasks and events (after its workloads were destroyed)."""
        gone = self.pod_by_uid(uid)
        with self._tx() as db:
            version = self._next_version(db)
            db.execute("DELETE FROM pods WHERE uid = ?", (uid,))
            db.execute("DELETE FROM tasks WHERE pod_uid = ?", (uid,))
            db.execute("DELETE FROM events WHERE pod_uid = ?", (uid,))
        if gone is not None:
            self._notify("DELETED", replace(gone, resource_version=version))

    # --- tasks --------------------------------------------------------------------------------

    def record_task_intent(
        self, pod_uid: str, container: str, attempt: int, task_id: str, runtime: str
    ) -> None:
        """Record that a task is about to be started (so a crash mid-start leaves a trace)."""
        with self._tx(durable=False) as db:
            db.execute(
                "INSERT OR REPLACE INTO tasks (pod_uid, container, attempt, task_id, runtime, "
                "handle) VALUES (?, ?, ?, ?, ?, NULL)",
                (pod_uid, container, attempt, task_id, runtime),
            )

    def record_task_handle(self, pod_uid: str, container: str, attempt: int, handle: str) -> None:
        """Attach the runtime's handle JSON to a recorded task."""
        with self._tx(durable=False) as db:
            db.execute(
                "UPDATE tasks SET handle = ? WHERE pod_uid = ? AND container = ? AND attempt = ?",
                (handle, pod_uid, container, attempt),
            )

    def tasks(self, pod_uid: str, container: str | None = None) -> list[StoredTask]:
        """Return a pod's tasks (one container's when given), oldest attempt first."""
        query = "SELECT pod_uid, container, attempt, task_id, runtime, handle FROM tasks "
        query += "WHERE pod_uid = ?"
        params: tuple[str, ...] = (pod_uid,)
        if container is not None:
            query += " AND container = ?"
            params = (pod_uid, container)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY container, attempt", params).fetchall()
        return [StoredTask(*row) for row in rows]

    def forget_tasks_before(self, pod_uid: str, container: str, attempt: int) -> None:
        """Drop task records older than ``attempt`` (kept: this one and the one before it)."""
        with self._tx(durable=False) as db:
            db.execute(
                "DELETE FROM tasks WHERE pod_uid = ? AND container = ? AND attempt < ?",
                (pod_uid, container, attempt - 1),
            )

    # --- events -------------------------------------------------------------------------------

    def record_event(
        self, namespace: str, pod: str, pod_uid: str, type_: str, reason: str, message: str
    ) -> None:
        """Record an event; a repeat of the pod's latest event only bumps its count and time."""
        now = time.time()
        with self._tx(durable=False) as db:
            last = db.execute(
                "SELECT id, type, reason, message FROM events WHERE pod_uid = ? "
                "ORDER BY id DESC LIMIT 1",
                (pod_uid,),
            ).fetchone()
            if last is not None and tuple(last[1:]) == (type_, reason, message):
                db.execute(
                    "UPDATE events SET count = count + 1, last_at = ? WHERE id = ?", (now, last[0])
                )
                return
            db.execute(
                "INSERT INTO events (pod_uid, namespace, pod, type, reason, message, count, "
                "first_at, last_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)",
                (pod_uid, namespace, pod, type_, reason, message, now, now),
            )
            db.execute(
                "DELETE FROM events WHERE pod_uid = ? AND id NOT IN "
                "(SELECT id FROM events WHERE pod_uid = ? ORDER BY id DESC LIMIT ?)",
                (pod_uid, pod_uid, MAX_EVENTS_PER_POD),
            )

    def events(self, namespace: str | None = None, pod: str | None = None) -> list[StoredEvent]:
        """Return events, oldest first, filtered by namespace and pod name when given."""
        query = (
            "SELECT namespace, pod, pod_uid, type, reason, message, count, first_at, last_at "
            "FROM events WHERE 1 = 1"
        )
        params: list[str] = []
        if namespace is not None:
            query += " AND namespace = ?"
            params.append(namespace)
        if pod is not None:
            query += " AND pod = ?"
            params.append(pod)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        return [StoredEvent(*row) for row in rows]

    # --- peers --------------------------------------------------------------------------------

    def put_peer(self, peer: StoredPeer) -> None:
        """Insert or replace a peer (durable: the write survives power loss)."""
        with self._tx() as db:
            db.execute(
                f"INSERT OR REPLACE INTO peers ({_PEER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    peer.node_id,
                    peer.name,
                    peer.certificate,
                    peer.fingerprint,
                    peer.state,
                    peer.added_at,
                    peer.source,
                ),
            )

    def get_peer(self, node_id: str) -> StoredPeer | None:
        """Return the peer with this node ID, or None when there is none."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_PEER_COLUMNS} FROM peers WHERE node_id = ?", (node_id,)
            ).fetchone()
        return None if row is None else StoredPeer(*row)

    def list_peers(self, state: str | None = None) -> list[StoredPeer]:
        """Return peers ordered by name then node ID; only those in ``state`` when given."""
        query = f"SELECT {_PEER_COLUMNS} FROM peers"
        params: tuple[str, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            params = (state,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY name, node_id", params).fetchall()
        return [StoredPeer(*row) for row in rows]

    def set_peer_state(self, node_id: str, state: str) -> StoredPeer:
        """Set a peer's state (``"trusted"`` or ``"revoked"``), durably.

        Raises:
            NotFoundError: no peer has this node ID.
        """
        with self._tx() as db:
            row = db.execute(
                f"UPDATE peers SET state = ? WHERE node_id = ? RETURNING {_PEER_COLUMNS}",
                (state, node_id),
            ).fetchone()
            if row is None:
                raise NotFoundError(f'peers "{node_id}" not found')
        return StoredPeer(*row)
