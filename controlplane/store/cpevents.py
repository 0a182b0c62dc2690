"""The console's reads of ``cp_event``: filtered pages newest first (keyset on ``seq``),
one event with its process ancestry, and the overview's counts. Called by
``ControlPlaneStore`` inside its read transactions; the SQL of the events lives here and
in cpstore.py only.

Every page is a backward range scan of one (tenant, filter, seq) index
(controlplane/store/models.py), never an OFFSET: the client passes the last ``seq`` it
got as ``before``. A reader of every tenant gets the union of each tenant's scan (at most
``limit`` rows each), merged by ``seq``; a node's page is the union of its agents'
(agent_id, seq) scans (a node is an agent's host name); with more than
``MAX_UNION_TENANTS`` arms the query is left to the planner. The overview counts rows of
the partial indexes of alerts and enforcement decisions over the window without reading
a payload.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal_column, select, union_all
from sqlalchemy.orm import Session

from moray.controlplane.store.eventcols import PROCESS_TYPES, process_of
from moray.controlplane.store.models import Agent, Event

MAX_UNION_TENANTS = 64      # a global reader's page: one index scan per tenant up to this
MAX_ANCESTRY = 64           # ancestors walked for one event
HOUR_MS = 3_600_000
TOP_RULES = 10
# enforcement actions that stopped something (docs/policy.md): the overview's "blocks"
BLOCK_ACTIONS = ("blocked", "killed")
ONLINE_WITHIN = 30.0        # seconds since the last heartbeat (one every 10 s) = online
# literals, not parameters, so that the planner can use the partial indexes
ALERT: ColumnElement[str] = literal_column("'alert'")
ENFORCE: ColumnElement[str] = literal_column("'enforce'")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What a page of events must match; None: anything."""

    tenant: str | None = None
    agent_id: str | None = None
    type: str | None = None
    rule: str | None = None
    priority: str | None = None
    container: str | None = None         # the container's name
    image: str | None = None
    node: str | None = None              # the agents with this host name
    since_ms: int | None = None          # time_ms >= since_ms
    until_ms: int | None = None          # time_ms < until_ms

    def conditions(self) -> list[ColumnElement[bool]]:
        """The conditions on the rows (the node's: ``scan_arms``)."""
        out: list[ColumnElement[bool]] = []
        for column, value in ((Event.tenant, self.tenant), (Event.agent_id, self.agent_id),
                              (Event.type, self.type), (Event.rule, self.rule),
                              (Event.priority, self.priority),
                              (Event.container, self.container), (Event.image, self.image)):
            if value is not None:
                out.append(column == value)
        if self.since_ms is not None:
            out.append(Event.time_ms >= self.since_ms)
        if self.until_ms is not None:
            out.append(Event.time_ms < self.until_ms)
        return out


def _payload(raw: str) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def event_item(row: Event) -> dict[str, Any]:
    """A stored event as the console gets it: the payload's fields, then the row's own
    (which win: a payload cannot pass itself off as another ``seq``, tenant or agent).
    ``container`` is the container's name (the payload's container object is in the
    event's detail)."""
    payload = _payload(row.payload)
    item: dict[str, Any] = dict(payload) if payload is not None else {
        "invalid_payload": row.payload[:1024]}
    item.update(seq=row.seq, id=row.id, agent_id=row.agent_id, tenant=row.tenant,
                type=row.type, time_ms=row.time_ms, received_at=row.received_at,
                rule=row.rule, priority=row.priority, container=row.container,
                container_id=row.container_id, image=row.image, node=row.node,
                action=row.action)
    return item


def _tenants(session: Session) -> list[str]:
    return sorted(t for (t,) in session.execute(select(Agent.tenant).distinct()))


# one index scan of a page: a tenant's, an agent's, or (None) the planner's choice
Arm = ColumnElement[bool] | None


def page_statement(where: EventFilter, arms: Sequence[Arm], *, before: int | None,
                   after: int, limit: int, newest_first: bool) -> Select[Any]:
    """The query of a page's ``seq`` values: one index scan, or with several ``arms`` the
    union of one scan per arm, merged."""
    order = Event.seq.desc() if newest_first else Event.seq.asc()
    bounds = [*where.conditions(), Event.seq > after]
    if before is not None:
        bounds.append(Event.seq < before)

    def scan(arm: Arm) -> Select[Any]:
        query = select(Event.seq).where(*bounds)
        if arm is not None:
            query = query.where(arm)
        return query.order_by(order).limit(limit)

    if len(arms) == 1:
        return scan(arms[0])
    union = union_all(*(select(scan(a).subquery().c.seq) for a in arms)).subquery()
    return select(union.c.seq).order_by(
        union.c.seq.desc() if newest_first else union.c.seq.asc()).limit(limit)


def scan_arms(session: Session, where: EventFilter) -> list[Arm]:
    """The index scans a page is made of: a node's agents one by one (an empty list: the
    node has no agent); the filter's tenant or agent; for a reader of every tenant each
    tenant that has agents. More than MAX_UNION_TENANTS: one scan the planner picks."""
    if where.node is not None:
        query = select(Agent.id).where(Agent.hostname == where.node)
        if where.tenant is not None:
            query = query.where(Agent.tenant == where.tenant)
        if where.agent_id is not None:
            query = query.where(Agent.id == where.agent_id)
        agents = sorted(session.scalars(query))
        if len(agents) > MAX_UNION_TENANTS:
            return [Event.agent_id.in_(agents)]
        return [Event.agent_id == a for a in agents]
    if where.tenant is not None or where.agent_id is not None:
        return [None]
    found = _tenants(session)
    return [Event.tenant == t for t in found] if 1 <= len(found) <= MAX_UNION_TENANTS \
        else [None]


def page_seqs(session: Session, where: EventFilter, *, before: int | None, after: int,
              limit: int, newest_first: bool) -> list[int]:
    """The ``seq`` of the page's rows, in page order."""
    arms = scan_arms(session, where)
    if not arms:
        return []
    return list(session.scalars(page_statement(
        where, arms, before=before, after=after, limit=limit, newest_first=newest_first)))


def page(session: Session, where: EventFilter, *, before: int | None = None,
         after: int = 0, limit: int = 100, newest_first: bool = True) -> list[Event]:
    seqs = page_seqs(session, where, before=before, after=after, limit=limit,
                     newest_first=newest_first)
    if not seqs:
        return []
    rows = {r.seq: r for r in session.scalars(select(Event).where(Event.seq.in_(seqs)))}
    return [rows[s] for s in seqs if s in rows]


def _step(record: dict[str, Any], kind: str, row: Event | None,
          fallback_time: int) -> dict[str, Any]:
    process, _ = process_of(record, kind)
    args = process.get("args")
    return {"exec_id": process.get("exec_id"), "pid": process.get("pid"),
            "binary": process.get("binary"),
            "args": [a for a in args if isinstance(a, str)] if isinstance(args, list) else [],
            "time_ms": row.time_ms if row is not None else fallback_time,
            "seq": row.seq if row is not None else None}


def ancestry(session: Session, event: Event) -> list[dict[str, Any]]:
    """The event's process, then its parent, ... up to the oldest ancestor whose exec or
    fork the same agent reported: each step one lookup of the (agent_id, exec_id) index
    (the newest record of that process stored before the event), at most MAX_ANCESTRY
    steps, each exec id once (a hostile agent's cycle ends the walk)."""
    payload = _payload(event.payload)
    if payload is None:
        return []
    exec_id = process_of(payload, event.type)[0].get("exec_id")
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    record, kind = payload, event.type
    row: Event | None = event if event.type in PROCESS_TYPES else None
    if row is None and isinstance(exec_id, str):
        row = _process_row(session, event, exec_id)
        if row is not None:
            found = _payload(row.payload)
            if found is not None:
                record, kind = found, row.type
    while True:
        step = _step(record, kind, row, event.time_ms)
        current = step["exec_id"]
        if not isinstance(current, str) or current in seen or len(chain) >= MAX_ANCESTRY:
            break
        seen.add(current)
        chain.append(step)
        _, parent = process_of(record, kind)
        parent_id = parent.get("exec_id")
        if not isinstance(parent_id, str) or parent_id in seen:
            break
        row = _process_row(session, event, parent_id)
        found = _payload(row.payload) if row is not None else None
        if row is None or found is None:
            break
        record, kind = found, row.type
    return chain


def _process_row(session: Session, event: Event, exec_id: str) -> Event | None:
    return session.scalars(
        select(Event).where(Event.agent_id == event.agent_id, Event.exec_id == exec_id,
                            Event.seq <= event.seq)
        .order_by(Event.seq.desc()).limit(1)).first()


def _window(tenant: str | None, since_ms: int, kind: Any) -> list[ColumnElement[bool]]:
    where = [Event.type == kind, Event.time_ms >= since_ms]
    if tenant is not None:
        where.append(Event.tenant == tenant)
    return where


def overview(session: Session, *, tenant: str | None, hours: int, now: float,
             connected: set[str]) -> dict[str, Any]:
    """The console's overview, without the images (the scanner's store adds them)."""
    now_ms = int(now * 1000)
    first = (now_ms // HOUR_MS - hours + 1) * HOUR_MS
    alerts = _window(tenant, first, ALERT)
    bucket = (Event.time_ms // HOUR_MS).label("h")
    per_hour = {int(h): int(n) for h, n in session.execute(
        select(bucket, func.count()).where(*alerts).group_by(bucket))}
    count = func.count().label("n")
    top = session.execute(select(Event.rule, count).where(*alerts).group_by(Event.rule)
                          .order_by(count.desc(), Event.rule).limit(TOP_RULES)).all()
    blocks = session.scalar(select(func.count()).where(
        *_window(tenant, first, ENFORCE), Event.action.in_(BLOCK_ACTIONS))) or 0
    agents = {"online": 0, "offline": 0, "revoked": 0}
    query = select(Agent.id, Agent.last_seen, Agent.revoked_at)
    if tenant is not None:
        query = query.where(Agent.tenant == tenant)
    for agent_id, last_seen, revoked_at in session.execute(query):
        if revoked_at is not None:
            agents["revoked"] += 1
        elif agent_id in connected or (last_seen or 0) >= now - ONLINE_WITHIN:
            agents["online"] += 1
        else:
            agents["offline"] += 1
    start = first // HOUR_MS
    return {"agents": agents,
            "alerts_over_time": [{"t": h * HOUR_MS, "count": per_hour.get(h, 0)}
                                 for h in range(start, start + hours)],
            "top_rules": [{"rule": r, "count": int(n)} for r, n in top],
            "blocks": int(blocks)}

