"""``moray gateway``: the tier between agents and the server (docs/controlplane.md
"Gateways"): upstream.py (the link to the server), downstream.py (AgentService for
agents), fanout.py (per-agent policy diff), forwarder.py (events: batching, spool, SIEM),
main.py (start-up and CLI)."""
