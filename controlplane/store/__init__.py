"""The control plane's database: one SQLite file (``$MORAY_DATA_DIR/moray.db``, default
/var/lib/moray) or PostgreSQL by URL.

Two modules share it, each owning its own tables, both created and changed only by the
alembic migrations in ``migrations/``:
- ``cpstore`` / ``models``: control plane tables (``cp_*``) on the SQLAlchemy ORM.
- ``scanstore`` / ``scanmodels``: the vulnerability knowledge base, the scanner's
  per-layer cache, scan jobs, image assurance verdicts and the registries and images
  the server scans on a schedule (``vuln_*``, ``scan_*``, ``image_verdict``,
  ``scanstore_meta``), on SQLAlchemy Core tables; ``scanstore.ScanStore`` puts together
  one store per aggregate from ``scan/`` (vulns, layercache, verdicts, jobs, targets over
  ``scan/base.py``), the only code that issues SQL for them.
"""
