"""``ScanStore``: the scanner's data as one object (what moray-server, the scan workers
and the CLIs open), made of one store per aggregate over a shared base, each in its own
module of ``controlplane/store/scan/``:

- ``scan.vulns.VulnData``: vulnerability knowledge base, replaced per source record on
  every import; an import that adds records bumps the vulndb generation.
- ``scan.layercache.LayerCache``: per-layer scan results, written once per layer digest
  and analyzer version.
- ``scan.verdicts.Verdicts``: assurance verdicts per (image digest, policy), stamped
  with the vulndb generation they were matched against.
- ``scan.jobs.ScanJobs``: the scan job queue and its leases.
- ``scan.targets.ScanTargets``: the registries and images scanned on a schedule.
- ``scan.inventory.Inventory``: the workloads the admission webhook has seen, and which
  of them run an image with a given vulnerability.

The tables are ``controlplane/store/scanmodels.py``, created and changed by the alembic
migrations; they live in the control plane's database (the SQLite file
``$MORAY_DATA_DIR/moray.db`` or PostgreSQL), so ``moray-server`` and the CLI on the
server's host see the same data. The records and helpers of each aggregate are
re-exported here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case as sql_case
from sqlalchemy import distinct, func, literal, select

from moray.controlplane.store.scan.base import (
    DEFAULT_DATA_DIR,
    data_dir,
    default_db_path,
    locked,
    open_engine,
)
from moray.controlplane.store.scan.inventory import Inventory, WorkloadImage, WorkloadReview
from moray.controlplane.store.scan.jobs import ScanJob, ScanJobs, job_key
from moray.controlplane.store.scan.layercache import LayerCache
from moray.controlplane.store.scan.targets import (
    RegisteredImage,
    RegisteredRegistry,
    ScanTargets,
)
from moray.controlplane.store.scan.verdicts import (
    ImageReport,
    ImageVuln,
    Verdict,
    Verdicts,
    image_report,
    image_vulns,
)
from moray.controlplane.store.scan.vulns import AdvisoryRecord, AffectedRecord, VulnData
from moray.controlplane.store.scanmodels import (
    image_verdict,
    scan_layer_cache,
    vuln_advisory,
    vuln_affected,
    vuln_import,
)

__all__ = [
    "DEFAULT_DATA_DIR", "AdvisoryRecord", "AffectedRecord", "ImageReport", "ImageVuln",
    "RegisteredImage",
    "RegisteredRegistry", "ScanJob", "ScanStore", "Verdict", "WorkloadImage", "WorkloadReview",
    "data_dir", "default_db_path",
    "image_report", "image_vulns", "job_key", "open_engine",
]


class ScanStore(VulnData, LayerCache, Verdicts, ScanJobs, ScanTargets, Inventory):
    """``ScanStore(path_or_url)`` opens (and migrates) its own engine; ``ScanStore(engine)``
    shares one that is already migrated (moray-server's)."""

    @locked
    def status(self) -> dict[str, Any]:
        """What ``moray vulndb status`` shows: the knowledge base and what was built on it."""
        a = vuln_affected.c
        ecosystem = (a.ecosystem + sql_case((a.release != "", literal(" ") + a.release),
                                            else_="")).label("ecosystem_release")

        with self._conn() as c:
            def count(table: Any) -> int:
                return int(c.scalar(select(func.count()).select_from(table)) or 0)

            per_eco = {str(k): int(v) for k, v in c.execute(
                select(ecosystem, func.count(distinct(a.advisory_id)))
                .group_by(ecosystem.name).order_by(ecosystem.name))}
            last = c.execute(select(vuln_import.c.path, vuln_import.c.imported_at)
                             .order_by(vuln_import.c.id.desc()).limit(1)).first()
            counts = {"advisories": count(vuln_advisory), "affected_rows": count(vuln_affected),
                      "cached_layers": count(scan_layer_cache),
                      "verdicts": count(image_verdict)}
        return {
            "path": str(self.path) if self._engine.dialect.name == "sqlite" else self.url,
            "advisories": counts["advisories"],
            "affected_rows": counts["affected_rows"],
            "by_ecosystem": per_eco,
            "generation": self.generation(),
            "last_import": {"path": last[0], "at": last[1]} if last else None,
            "cached_layers": counts["cached_layers"],
            "verdicts": counts["verdicts"],
        }
