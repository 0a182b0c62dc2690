"""The control plane's database.

For now one SQLite file (``$MORAY_DATA_DIR/moray.db``, default /var/lib/moray) holding the
vulnerability knowledge base, the scanner's per-layer cache and image assurance verdicts.
``ScanStore`` is the only code that issues SQL for these; vulndb and the scanner talk to it
through methods, so the tables can move onto versioned migrations without touching them.
"""
