"""Loss accounting: per-type queue drops and the rate-limited `loss` event."""

from __future__ import annotations

from moray.agent.bpf.abi import Op
from moray.agent.events.reader import BatchQueue
from moray.agent.output.loss import LossReporter


def rec(op: Op) -> bytes:
    return int(op).to_bytes(2, "little") + bytes(14)


def test_queue_counts_what_it_drops_per_type() -> None:
    q = BatchQueue(4)
    assert q.put([rec(Op.OPEN)] * 3)
    assert not q.put([rec(Op.OPEN)] * 2 + [rec(Op.CONNECT)])
    assert not q.put([rec(Op.EXEC), b"\x63"])
    assert q.dropped == 5
    assert q.dropped_by_type == {"open": 2, "connect": 1, "exec": 1, "unknown": 1}
    assert sum(q.dropped_by_type.values()) == q.dropped


def test_put_control_passes_a_full_queue() -> None:
    q = BatchQueue(1)
    assert q.put([rec(Op.OPEN)])
    q.put_control([rec(Op.EXIT)])
    assert q.depth() == 2 and q.dropped == 0


def test_loss_events_are_rate_limited_and_carry_what_was_lost_since_the_last() -> None:
    totals: dict[tuple[str, str], int] = {}
    now = [100.0]
    r = LossReporter(lambda: dict(totals), "n1", interval=10.0, clock=lambda: now[0],
                     wall=lambda: 1_700_000_000_000_000_000)
    assert r.check() is None  # nothing lost
    totals[("open", "ring")] = 7
    totals[("open", "queue")] = 3
    ev = r.check()
    assert ev is not None and ev["type"] == "loss" and ev["node"] == "n1"
    assert ev["loss"]["lost"] == {"open": {"ring": 7, "queue": 3}} and ev["loss"]["total"] == 10
    totals[("open", "ring")] = 9
    totals[("connect", "ring")] = 1
    now[0] += 5
    assert r.check() is None  # within the interval: held back, not lost
    now[0] += 5
    ev = r.check()
    assert ev is not None
    assert ev["loss"]["lost"] == {"open": {"ring": 2, "queue": 0},
                                  "connect": {"ring": 1, "queue": 0}}
    now[0] += 60
    assert r.check() is None and r.events == 2  # nothing new
