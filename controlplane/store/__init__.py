"""The control plane's database: one SQLite file (``$MORAY_DATA_DIR/moray.db``, default
/var/lib/moray) or PostgreSQL by URL.

Two modules share it, each owning its own tables:
- ``cpstore`` / ``models`` / ``migrations``: control plane tables (``cp_*``) on SQLAlchemy
  with alembic migrations.
- ``scanstore``: the vulnerability knowledge base, the scanner's per-layer cache, scan
  jobs and image assurance verdicts (``vuln_*``, ``scan_*``, ``image_verdict``,
  ``scanstore_meta``) on plain sqlite3 with ``CREATE TABLE IF NOT EXISTS``; it is the
  only code that issues SQL for them, so they can move onto migrations without touching
  vulndb or the scanner.
"""
