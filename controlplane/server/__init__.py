"""moray-server: the control plane (gRPC for agents, REST for people, one asyncio loop)."""
