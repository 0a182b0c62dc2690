"""`moray kube-enforcer`: a Kubernetes validating admission webhook that lets a pod's
containers start only from images whose assurance verdict passed.

One module per responsibility, in the order a request flows:

- ``config``: the settings (flags + YAML file) and their defaults;
- ``review``: an AdmissionReview v1 -> the workload, its containers and images (every
  pod-template kind; init and ephemeral containers);
- ``resolve``: an image reference -> the digest its verdict is stored under (tags through
  the registry, cached for a short while; digests forever);
- ``verdicts``: the control plane's verdict endpoint, through a cache that also serves the
  last answer while the server is away; scan requests; decision reports in batches;
- ``decide``: pure: review + per-image outcomes + settings -> allowed, message, warnings;
- ``app``: the HTTPS app (``POST /validate``, ``GET /healthz``, ``GET /metrics``) that runs
  them in that order; ``main``: the command.

Design, settings and failure semantics: docs/kube-enforcer.md.
"""
