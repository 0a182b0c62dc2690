"""The scanner as a service of moray-server: what to scan and when, and who scans it.

- ``scheduler``: the server's thread that lists registered registries and images when
  they are due and queues stale images after a vulndb import.
- ``worker``: take a job from a queue, scan it with the engine, store the verdict.
- ``remote``: the job queue and verdict sink over the server's REST API, for workers on
  other hosts.
- ``api``: the REST endpoints for jobs, verdicts, registered targets and the vulndb.
- ``credentials``: registry credentials by reference (the store and the API hold only
  the reference).

The queue, verdicts and targets themselves are ``controlplane.store.scanstore``.
"""
