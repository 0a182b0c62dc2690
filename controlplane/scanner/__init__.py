"""Static container image scanner.

Reads an image (OCI layout, docker/OCI archive, registry) layer by layer as streams,
inventories packages, finds secrets, malware and configuration risks, and matches the
packages against the vulnerability knowledge base (``controlplane.vulndb``).

- ``engine/``: scanning one image (sources, layers, analyzers, findings, matching hooks,
  reports, assurance policies); no server, queue or store of its own.
- ``service/``: the scanner inside moray-server (scheduler, workers, job queue client,
  REST API, registry credentials).
- ``errors``: the scanner's error kinds, shared by both.
- ``cli``, ``workercli``, ``targets_cli``: the command lines (``moray scan``,
  ``moray-scanner-worker``, ``moray scan registry|image``).
"""
