"""The runtime-policy schema both sides use: model (records), load (text -> model, with
file:line:field problems), syscalls (names -> x86_64 numbers). The agent compiles and
applies (moray.agent.policy); the server validates and signs (moray.controlplane.server)."""
