"""The scan engine: one image in, one ``ScanResult`` out, with no server, queue or store of
its own (a layer cache and a vulnerability matcher are handed in through ``ScanOptions``).

- ``source`` (OCI layout, docker/OCI archives), ``registry`` (the OCI distribution API):
  where manifests, configs and layer blobs come from.
- ``layers``: streaming a layer tar safely (limits, unsafe entries refused).
- ``analyzers/``: files -> packages, one module per family (OS databases, language
  metadata, Go/Rust binaries, Java archives).
- ``secrets``, ``secretconfig``, ``malware``, ``config``: findings in files and in the
  image configuration.
- ``scan``: the per-layer pass, the layer merge and the scan of one image;
  ``protocols``: its pluggable parts; ``cache``: per-layer result caches.
- ``model``: the records (and package URLs); ``serialize``, ``report``: their JSON,
  table, SARIF and CycloneDX forms; ``policy``: image assurance policies and verdicts.
"""
