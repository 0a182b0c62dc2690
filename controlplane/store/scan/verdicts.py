"""Image assurance verdicts (``image_verdict``): one row per (image digest, policy),
overwritten by each evaluation, stamped with the vulndb generation of the data it was
matched against (older than the current generation = stale, see ``jobs.enqueue_stale``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select

from moray.controlplane.store.scan.base import ScanStoreBase, locked
from moray.controlplane.store.scanmodels import image_verdict


@dataclass(frozen=True, slots=True)
class Verdict:
    image_digest: str
    policy: str
    passed: bool
    reasons: list[str]
    vulndb_generation: int
    image: str
    created: float


_V = image_verdict.c


def _select() -> Select[Any]:
    return select(_V.image_digest, _V.policy, _V.passed, _V.reasons, _V.vulndb_generation,
                  _V.image, _V.created)


def _verdict(r: Any) -> Verdict:
    return Verdict(r[0], r[1], bool(r[2]), json.loads(r[3]), r[4], r[5], r[6])


class Verdicts(ScanStoreBase):
    @locked
    def put_verdict(self, v: Verdict) -> None:
        row = {"passed": v.passed, "reasons": json.dumps(v.reasons),
               "vulndb_generation": v.vulndb_generation, "image": v.image,
               "created": v.created}
        with self._conn() as c:
            c.execute(self._insert(image_verdict)
                      .values(image_digest=v.image_digest, policy=v.policy, **row)
                      .on_conflict_do_update(index_elements=["image_digest", "policy"],
                                             set_=row))

    @locked
    def record_verdict(self, image_digest: str, image: str, policy: str, passed: bool,
                       reasons: list[str], generation: int | None = None) -> Verdict:
        """Store a verdict stamped with the vulndb generation it was matched against
        (``generation``, e.g. read before the scan began; default: the current one)."""
        current = self.generation()
        gen = current if generation is None else min(generation, current)
        verdict = Verdict(image_digest, policy, passed, reasons, gen, image, self._clock())
        self.put_verdict(verdict)
        return verdict

    @locked
    def verdicts(self, image_digest: str) -> list[Verdict]:
        with self._conn() as c:
            rows = c.execute(_select().where(_V.image_digest == image_digest)
                             .order_by(_V.policy))
            return [_verdict(r) for r in rows]

    @locked
    def all_verdicts(self) -> list[Verdict]:
        with self._conn() as c:
            return [_verdict(r) for r in c.execute(_select().order_by(_V.image, _V.policy))]
