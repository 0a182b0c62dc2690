"""moray: runtime security for Linux containers and hosts, under one import name.

The source keeps one top folder per concern; this package gathers them (``moray/agent``,
``moray/controlplane`` and ``moray/api`` are links to the top folders of the same name, so
a checkout, an editable install and a wheel all import the same names):

- ``moray.agent``: the host agent (BPF loader, events, enrichment, detection, policy
  enforcement, outputs);
- ``moray.controlplane``: the server, its store, the scanner and the vulnerability base;
- ``moray.api``: what both sides share: the gRPC contract (``moray.api.proto``) and the
  runtime-policy schema (``moray.api.policy``: model, loader with file:line errors,
  syscall table);
- ``moray.errors``: the one error root, ``MorayError``;
- ``moray.cli``: the one ``moray`` command (``moray-*`` names are aliases of it).
"""

__version__ = "0.1.0"
