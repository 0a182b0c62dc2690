"""The MicroEnforcer (``moray micro``): runtime policies inside one container, unprivileged,
with seccomp user notification (docs/micro.md; what each module owns: README.md)."""
