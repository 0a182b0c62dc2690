"""The scanner's data, one module per aggregate over one shared base (``base.ScanStoreBase``:
the engine, the lock, transactions and the ``scanstore_meta`` counters):

- ``vulns``: the vulnerability knowledge base (``vuln_advisory``, ``vuln_alias``,
  ``vuln_affected``, ``vuln_import``) and its generation.
- ``layercache``: the per-layer scan cache (``scan_layer_cache``).
- ``verdicts``: image assurance verdicts (``image_verdict``) and the findings they were
  made on (``image_vuln``).
- ``jobs``: the scan job queue and its leases (``scan_job``).
- ``targets``: the registries and images the server scans on a schedule
  (``scan_registry``, ``scan_image``).
- ``inventory``: the workloads `moray kube-enforcer` reviewed (``kube_workload``,
  ``kube_workload_image``), queried with the findings stored beside verdicts
  (``image_vuln``, written by ``verdicts``).

``controlplane/store/scanstore.py`` puts them together as ``ScanStore``, the one object
the server, the workers and the CLIs open. The tables are ``controlplane/store/
scanmodels.py``; these modules are the only code that issues SQL for them, all of it
through SQLAlchemy's expression language (``select``/``insert``/``update`` on the
tables, the dialect's ``insert ... on_conflict_*`` for upserts), as ``cpstore`` does.
"""
