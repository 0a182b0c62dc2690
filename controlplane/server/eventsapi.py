"""The console's data endpoints: events and alerts filtered and paged from indexes, one
event with its process ancestry, and the overview.

- ``GET /api/v1/events``: with ``page=1`` (or ``before``), ``{"events": [...newest
  first...], "next": <seq to pass as before> | null}``, every filter an index range scan
  (controlplane/store/cpevents.py); without, the list of events after ``after`` oldest
  first, as before (the CLI's ``moray events`` follows with it).
- ``GET /api/v1/events/{seq}``: ``{"event", "payload", "ancestry"}``.
- ``GET /api/v1/overview?hours=24``: agents online/offline/revoked, alerts per hour, top
  rules, blocks, images by verdict.

A principal scoped to a tenant reads that tenant only (``tenancy.scope``, the one rule);
``EVENTS_ACCESS``
gives each endpoint a role class, as ``SCAN_ACCESS`` does.
"""

# No `from __future__ import annotations`: FastAPI reads endpoint annotations at
# definition time and they refer to closures.

import json
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from moray.controlplane.server.hub import AgentHub
from moray.controlplane.server.tenancy import scope
from moray.controlplane.store.cpevents import EventFilter
from moray.controlplane.store.cpstore import ControlPlaneStore
from moray.controlplane.store.scanstore import ScanStore

P = "/api/v1"
EVENTS_ACCESS: dict[tuple[str, str], str] = {
    ("GET", P + "/events"): "read",
    ("GET", P + "/events/{seq}"): "read",
    ("GET", P + "/overview"): "read",
}
INT64_MAX = 2**63 - 1
MAX_HOURS = 24 * 31

# a filter value: no NUL (PostgreSQL text cannot hold one: refused here on every database)
Value = Annotated[str | None, Query(max_length=512, pattern=r"^[^\x00]*$")]
Seq = Annotated[int | None, Query(ge=1, le=INT64_MAX)]
Millis = Annotated[int | None, Query(ge=-INT64_MAX, le=INT64_MAX)]


def _json(body: Any) -> Response:
    """``body`` serialized by orjson (FastAPI's encoder took most of a page's time); an
    agent's integer beyond 64 bits, which orjson refuses, by the standard library."""
    try:
        data = orjson.dumps(body)
    except TypeError:
        data = json.dumps(body).encode()
    return Response(data, media_type="application/json")


def events_router(store: ControlPlaneStore, hub: AgentHub | None, scans: ScanStore | None,
                  authorize: Callable[[str, str], Callable[..., Any]]) -> APIRouter:
    router = APIRouter()

    def dep(method: str, path: str) -> Any:
        return Depends(authorize(method, path))

    @router.get(P + "/events")
    def events(who: Annotated[Any, dep("GET", P + "/events")],
               agent: Value = None, type: Value = None, rule: Value = None,
               priority: Value = None, container: Value = None, image: Value = None,
               node: Value = None, tenant: Value = None,
               since_ms: Millis = None, until_ms: Millis = None,
               before: Seq = None,
               after: Annotated[int, Query(ge=0, le=INT64_MAX,
                                           description="events with seq > after")] = 0,
               page: Annotated[int, Query(ge=0, le=1, description="1: the paged shape, "
                                          "newest first")] = 0,
               limit: Annotated[int, Query(ge=1, le=10000)] = 100,
               ) -> Response:
        where = EventFilter(tenant=scope(who, tenant), agent_id=agent, type=type, rule=rule,
                            priority=priority, container=container, image=image, node=node,
                            since_ms=since_ms, until_ms=until_ms)
        if not page and before is None:
            return _json(store.query_events(where=where, after_seq=after, limit=limit))
        found, next_before = store.event_page(where, before=before, after=after,
                                              limit=min(limit, 1000))
        return _json({"events": found, "next": next_before})

    @router.get(P + "/events/{seq}")
    def event(seq: Annotated[int, Path(ge=1, le=INT64_MAX)],
              who: Annotated[Any, dep("GET", P + "/events/{seq}")]) -> Response:
        found = store.event_detail(seq, tenant=scope(who, None))
        if found is None:
            raise HTTPException(404, f"no event {seq}")
        return _json(found)

    @router.get(P + "/overview")
    async def overview(who: Annotated[Any, dep("GET", P + "/overview")],
                       hours: Annotated[int, Query(ge=1, le=MAX_HOURS)] = 24,
                       tenant: Value = None) -> dict[str, Any]:
        seen = scope(who, tenant)
        connected = set(hub.connected()) if hub is not None else set()
        out = await run_in_threadpool(store.overview, tenant=seen, hours=hours,
                                      connected=connected)
        out["images_by_verdict"] = (await run_in_threadpool(scans.verdict_counts, seen)
                                    if scans is not None else
                                    {"compliant": 0, "non-compliant": 0, "unscanned": 0})
        return out

    return router
