"""One watcher per server process: it learns that the policy set or an agent changed and
tells every subscriber in memory, so that policy streams (and a gateway's agents) never
poll the database.

State owned here:
- ``snapshot``: the current policy set of every tenant (one ``PolicySnapshot``, read
  once per change and shared by every subscriber; streams filter it by their agent's
  tenant and labels). Replaced, never modified.
Changes that move it, and what each does:
- ``poke()`` (a change made in this process: REST apply/rollback/delete): re-read the
  policy set now; publish a new snapshot if any policy's version differs.
- a PostgreSQL notification on channel ``moray_cp`` (``cpstore`` sends one in the
  transaction of every policy version, label change and revocation, so it is delivered
  at commit, to every server process on the database, this one included):
  ``policy`` -> re-read as for ``poke``; ``agent:<id>`` / ``revoke:<id>`` -> the agent
  subscribers are told (its streams re-read the agent; a revoked one ends).
- the listener reconnects (with back-off, after the database or the network failed):
  notifications may have been lost, so everything is re-read and every agent subscriber
  told to re-read its agent (``agent_id`` None).
- ``verdicts`` (PostgreSQL notification sent with each stored image verdict), or a poke
  from the scan store (this process): re-read, with the image-verdict list
  (``extra``: imagelist.py adds it to the policy set of the tenants that use it).
- the safety-net poll (``poll_seconds``, default 30 s, one light query by this watcher,
  not per stream): the policy versions (or the verdicts' version) differ from the
  snapshot's -> re-read. On SQLite
  (one server process per database file) it is the only cross-process path, for writers
  other than the server.

Subscribers are plain callbacks run on the watcher's event loop; they must not block
(the hub's only set events). ``changes()`` is the same as an async iterator that yields
the latest snapshot (a slow consumer skips intermediate ones, never gets a stale one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from moray.api.imageverdicts import VERDICTS_NAME
from moray.controlplane.store.cpstore import NOTIFY_CHANNEL, ControlPlaneStore, PolicyRecord

log = logging.getLogger(__name__)

POLL_SECONDS = 30.0
BACKOFF_MAX = 30.0
LISTENER_NAME = "moray-server change watcher"    # pg_stat_activity.application_name

PolicyCallback = Callable[["PolicySnapshot"], None]


class ExtraRecords(Protocol):
    """Records the watcher adds to the policy set it read (imagelist.ImageListSource)."""

    retry_in: float     # > 0 after ``add``: newer records wait; read again after this long

    def add(self, policies: dict[str, dict[str, PolicyRecord]]) -> None: ...

    def version(self) -> tuple[int, int]: ...

AgentCallback = Callable[[str | None, bool], None]


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """Every tenant's current policies (removed ones included: a stream sends their
    removal). ``serial`` grows by one per published snapshot of this watcher; ``at`` is
    when it was read (time.time())."""

    serial: int
    policies: Mapping[str, Mapping[str, PolicyRecord]] = field(default_factory=dict)
    at: float = 0.0

    def tenant(self, tenant: str) -> Mapping[str, PolicyRecord]:
        return self.policies.get(tenant, {})

    def versions(self) -> dict[tuple[str, str], int]:
        return {(t, n): r.version for t, ps in self.policies.items() for n, r in ps.items()}


class PolicyWatcher:
    """Watches the store for policy and agent changes; see the module docstring.

    ``listen_url``: a libpq URL (``postgresql://...``) to LISTEN on, None on SQLite.
    Use: ``await start()`` (reads the first snapshot), ``subscribe(cb)``,
    ``subscribe_agents(cb)``, ``poke()`` after a local change, ``await stop()``.
    """

    def __init__(self, store: ControlPlaneStore, *, listen_url: str | None = None,
                 poll_seconds: float = POLL_SECONDS,
                 on_query: Callable[[str], None] | None = None,
                 extra: ExtraRecords | None = None) -> None:
        self.store = store
        self.extra = extra
        self._extra_version: tuple[int, int] | None = None
        self.listen_url = listen_url
        self.poll_seconds = poll_seconds
        self.snapshot = PolicySnapshot(0)
        self.listening = False              # the LISTEN connection is up
        self.reconnects = 0
        self._on_query = on_query or (lambda _what: None)
        self._policy_subs: list[PolicyCallback] = []
        self._agent_subs: list[AgentCallback] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- interface -----------------------------------------------------------------------

    def subscribe(self, callback: PolicyCallback) -> Callable[[], None]:
        """Call ``callback(snapshot)`` on every new policy snapshot; returns the
        unsubscribe function."""
        self._policy_subs.append(callback)
        return lambda: self._policy_subs.remove(callback)

    def subscribe_agents(self, callback: AgentCallback) -> Callable[[], None]:
        """Call ``callback(agent_id, revoked)`` when an agent's labels or revocation
        changed (``agent_id`` None: any agent may have, re-read them all)."""
        self._agent_subs.append(callback)
        return lambda: self._agent_subs.remove(callback)

    async def changes(self) -> AsyncIterator[PolicySnapshot]:
        """The current snapshot, then each newer one (latest only)."""
        ready = asyncio.Event()
        unsubscribe = self.subscribe(lambda _snap: ready.set())
        try:
            seen = -1
            while True:
                if self.snapshot.serial != seen:
                    seen = self.snapshot.serial
                    yield self.snapshot
                ready.clear()
                if self.snapshot.serial == seen:
                    await ready.wait()
        finally:
            unsubscribe()

    def poke(self) -> None:
        """Something changed in this process: re-read soon. Thread-safe."""
        if self._loop is not None and self._dirty is not None:
            self._loop.call_soon_threadsafe(self._dirty.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._dirty = asyncio.Event()
        await self._reload()
        self._tasks = [asyncio.create_task(self._reloader(), name="policy-watch-reload"),
                       asyncio.create_task(self._poller(), name="policy-watch-poll")]
        if self.listen_url:
            self._tasks.append(asyncio.create_task(self._listener(), name="policy-watch-listen"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- internals -----------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, PolicyRecord]]:
        self._on_query("policies")
        out: dict[str, dict[str, PolicyRecord]] = {}
        for record in self.store.current_policies(include_removed=True):
            out.setdefault(record.tenant, {})[record.name] = record
        if self.extra is not None:
            self._extra_version = self.extra.version()
            self.extra.add(out)
        return out

    async def _reload(self) -> bool:
        """Re-read the policy set; publish it if any version differs. True if published."""
        policies = await asyncio.to_thread(self._read)
        if self.extra is not None and self.extra.retry_in > 0 and self._dirty is not None:
            asyncio.get_running_loop().call_later(self.extra.retry_in, self._dirty.set)
        old = self.snapshot
        fresh = PolicySnapshot(old.serial + 1, policies, time.time())
        if old.serial and fresh.versions() == old.versions():
            return False
        self.snapshot = fresh
        log.info("policy set changed", extra={"serial": fresh.serial,
                                              "policies": sum(map(len, policies.values()))})
        for callback in list(self._policy_subs):
            self._call(callback, fresh)
        return True

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:   # one subscriber's bug must not stop the others: log, go on
            log.exception("policy watch subscriber failed")

    def _agent_changed(self, agent_id: str | None, revoked: bool) -> None:
        for callback in list(self._agent_subs):
            self._call(callback, agent_id, revoked)

    async def _reloader(self) -> None:
        """Coalesces pokes and notifications: one re-read per burst of changes."""
        assert self._dirty is not None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._reload()
            except Exception as err:   # the database is away: the safety net retries
                log.warning("reading the policy set failed", extra={"error": one_line(err)})

    async def _poller(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                self._on_query("versions")
                versions = await asyncio.to_thread(self.store.policy_versions)
                extra = (await asyncio.to_thread(self.extra.version)
                         if self.extra is not None else None)
            except Exception as err:
                log.warning("policy safety-net poll failed", extra={"error": one_line(err)})
                continue
            snap = {k: v for k, v in self.snapshot.versions().items()
                    if k[1] != VERDICTS_NAME}
            if versions != snap or extra != self._extra_version:
                log.info("policy change found by the safety-net poll")
                assert self._dirty is not None
                self._dirty.set()

    def _dispatch(self, payload: str) -> None:
        kind, _, key = payload.partition(":")
        if kind in ("policy", "verdicts"):
            assert self._dirty is not None
            self._dirty.set()
        elif kind in ("agent", "revoke") and key:
            self._agent_changed(key, kind == "revoke")
        else:
            log.warning("unknown change notification", extra={"payload": payload[:100]})

    async def _listener(self) -> None:
        import psycopg

        assert self.listen_url is not None and self._dirty is not None
        delay = 0.5
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.listen_url, autocommit=True, connect_timeout=10, keepalives=1,
                    application_name=LISTENER_NAME,
                    keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
            except psycopg.Error as err:
                log.warning("cannot listen for changes, retrying", extra={
                    "error": one_line(err), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX, delay * 2)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening = True
                    if not first:      # notifications may have been lost meanwhile
                        self.reconnects += 1
                        log.info("listening for changes again")
                        self._dirty.set()
                        self._agent_changed(None, False)
                    first = False
                    delay = 0.5
                    while True:
                        async for note in conn.notifies(timeout=self.poll_seconds):
                            self._dispatch(note.payload)
                        await conn.execute("SELECT 1")   # still there?
            except psycopg.Error as err:
                log.warning("change listener lost its connection, reconnecting", extra={
                    "error": one_line(err), "retry_in": delay})
            finally:
                self.listening = False
            await asyncio.sleep(delay)
            delay = min(BACKOFF_MAX, delay * 2)


def one_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None) or err
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}"[:300]


def libpq_url(sqlalchemy_url: Any) -> str | None:
    """The libpq URL of a PostgreSQL engine URL (None for other databases)."""
    if sqlalchemy_url.get_backend_name() != "postgresql":
        return None
    return str(sqlalchemy_url.set(drivername="postgresql").render_as_string(
        hide_password=False))
