"""Event retention in the store (``ControlPlaneStore.prune_events``): per tenant, oldest
first, by age and then by size, counted; with an injected clock."""

from __future__ import annotations

from sqlalchemy import Engine

from moray.controlplane.store.cpstore import ControlPlaneStore


def _agent(store: ControlPlaneStore, tenant: str) -> str:
    token = store.create_enrollment_token(tenant=tenant, labels={}, author="t")
    return store.enroll_agent(token, hostname=tenant, labels={},
                              issue=lambda a: (f"serial-{a}", "sha")).id


def test_prune_drops_oldest_first_per_tenant(engine: Engine) -> None:
    now = [1000.0]
    store = ControlPlaneStore(engine, clock=lambda: now[0])
    a, b = _agent(store, "ta"), _agent(store, "tb")
    for i in range(10):                   # ta: 10 events, one second apart
        store.insert_events(a, "ta", [(f"a{i}", 0, "exec", "{}")])
        now[0] += 1
    store.insert_events(b, "tb", [(f"b{i}", 0, "exec", "{}") for i in range(5)])
    # nothing is old enough or beyond the limits
    assert store.prune_events(max_age=100, max_per_tenant=10) == {}
    # age: received before now-5.5 (a0..a4, at 1000..1004; now is 1010)
    assert store.prune_events(max_age=5.5, max_per_tenant=None) == {"ta": (5, 0)}
    # size, each tenant on its own: ta keeps its newest 3 of 5, tb its newest 3 of 5
    assert store.prune_events(max_age=None, max_per_tenant=3, batch=2) == {
        "ta": (0, 2), "tb": (0, 2)}
    left = [e["id"] for e in store.query_events(limit=100)]
    assert left == ["a7", "a8", "a9", "b2", "b3", "b4"]
    # both at once, in small batches: age first, then size
    now[0] += 100
    assert store.prune_events(max_age=50, max_per_tenant=0, batch=1) == {
        "ta": (3, 0), "tb": (3, 0)}
    assert store.count_events() == 0
