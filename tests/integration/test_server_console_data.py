"""The console's data endpoints (controlplane/server/eventsapi.py) through a real
moray-server on SQLite and PostgreSQL: filtered keyset pages, the old list shape, an
event's detail with its ancestry, the overview, and a tenant-scoped token that sees its
own tenant only. Events are stored through the store's own insert path on the server's
database."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from moray.controlplane.store import db
from moray.controlplane.store.cpstore import ControlPlaneStore
from tests.helpers.controlplane import Api, ServerProcess
from tests.helpers.postgres import create_database
from tests.unit.controlplane.test_cpevents import alert, container, proc_event
from tests.unit.controlplane.test_store import enrolled

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[ServerProcess, ControlPlaneStore]]:
    url = None
    if request.param == "postgresql":
        url = create_database(request.getfixturevalue("pg_base"))
    srv = ServerProcess(tmp_path_factory.mktemp("server"), database_url=url).start()
    engine = db.make_engine(db.database_url(url, data=srv.data_dir))
    store = ControlPlaneStore(engine)
    a1, a2 = enrolled(store, "t1"), enrolled(store, "t2")
    web = container("web")
    events: list[tuple[str, str, dict[str, Any]]] = [
        (a1, "t1", proc_event("exec", 1, None, args=["/sbin/init"])),
        (a1, "t1", proc_event("exec", 20, 1, args=["sh", "-c", "x"], ctr=web)),
        *((a1, "t1", proc_event("open", 20, 1, ctr=web)) for _ in range(7)),
        (a1, "t1", alert("Shell in container", "WARNING", proc_event("open", 20, 1, ctr=web))),
        (a2, "t2", alert("Other tenant's rule", "ERROR", proc_event("open", 5, None))),
    ]
    for i, (agent, tenant, event) in enumerate(events):
        store.insert_events(agent, tenant, [(f"e{i}", int(time.time() * 1000), event["type"],
                                             json.dumps(event))])
    yield srv, store
    engine.dispose()
    srv.stop()


def pages(api: Api, **query: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    before = None
    while True:
        params = {**query, "page": 1, "limit": 3, **({"before": before} if before else {})}
        body = api("GET", "/api/v1/events", expect=200, params=params)
        out += body["events"]
        before = body["next"]
        if before is None:
            return out


def test_filtered_pages_detail_and_old_shape(server: tuple[ServerProcess, ControlPlaneStore]
                                            ) -> None:
    srv, _ = server
    api = srv.api()
    everything = pages(api)
    seqs = [e["seq"] for e in everything]
    assert len(seqs) == 11 and seqs == sorted(set(seqs), reverse=True)
    assert [e["container"] for e in pages(api, container="web", type="exec")] == ["web"]
    (hit,) = pages(api, rule="Shell in container")
    assert (hit["priority"], hit["tenant"], hit["type"]) == ("WARNING", "t1", "alert")
    assert [e["tenant"] for e in pages(api, tenant="t2")] == ["t2"]
    detail = api("GET", f"/api/v1/events/{hit['seq']}", expect=200)
    assert [s["pid"] for s in detail["ancestry"]] == [20, 1]
    assert detail["ancestry"][0]["args"] == ["sh", "-c", "x"]
    assert api.status("GET", "/api/v1/events/999999") == 404
    old = api("GET", "/api/v1/events", expect=200, params={"after": 0, "limit": 3})
    assert isinstance(old, list) and [e["seq"] for e in old] == sorted(seqs)[:3]
    assert old[0]["event"]["type"] == "exec"
    for bad in ({"before": 0}, {"limit": 0}, {"page": 2}, {"rule": "x" * 600},
                {"container": "a\x00b"}):
        assert api.status("GET", "/api/v1/events", params=bad) == 422


def test_overview(server: tuple[ServerProcess, ControlPlaneStore]) -> None:
    srv, _ = server
    body = srv.api()("GET", "/api/v1/overview", expect=200, params={"hours": 24})
    assert set(body) == {"agents", "alerts_over_time", "top_rules", "blocks",
                         "images_by_verdict"}
    assert len(body["alerts_over_time"]) == 24
    assert body["images_by_verdict"] == {"compliant": 0, "non-compliant": 0, "unscanned": 0}
    assert body["agents"]["online"] + body["agents"]["offline"] == 2
    assert sum(b["count"] for b in body["alerts_over_time"]) == 2 and body["top_rules"] == [
        {"rule": "Other tenant's rule", "count": 1}, {"rule": "Shell in container", "count": 1}]
    assert srv.api().status("GET", "/api/v1/overview", params={"hours": 0}) == 422


def test_a_tenant_token_reads_its_own_tenant_only(
        server: tuple[ServerProcess, ControlPlaneStore]) -> None:
    srv, _ = server
    srv.api()("POST", "/api/v1/tenants", expect=201, json={"name": "t2"})  # the registry
    token = srv.api()("POST", "/api/v1/tokens", expect=201,
                      json={"name": "t2-viewer", "role": "viewer", "tenant": "t2"})["token"]
    api = srv.api(token)
    mine = pages(api)
    assert [e["rule"] for e in mine] == ["Other tenant's rule"]
    assert api.status("GET", "/api/v1/events", params={"page": 1, "tenant": "t1"}) == 403
    assert api.status("GET", "/api/v1/events", params={"tenant": "t1"}) == 403
    assert {e["tenant"] for e in api("GET", "/api/v1/events", expect=200)} == {"t2"}
    other = pages(srv.api(), tenant="t1")[0]["seq"]
    assert api.status("GET", f"/api/v1/events/{other}") == 404
    assert api.status("GET", f"/api/v1/events/{mine[0]['seq']}") == 200
    overview = api("GET", "/api/v1/overview", expect=200)
    assert overview["top_rules"] == [{"rule": "Other tenant's rule", "count": 1}]
    assert overview["agents"]["online"] + overview["agents"]["offline"] == 1
