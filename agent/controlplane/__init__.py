"""The agent side of the control plane: enrolment, the signed policy stream, the event
spool. The running agent wires it with three calls:

    from moray.agent.controlplane import ApplyResult, ControlPlaneClient, VerifiedPolicy

    def on_policy(policy: VerifiedPolicy) -> ApplyResult:   # policy.removed -> remove it
        ...compile + apply through agent/policy...
        return ApplyResult(ok=True, tiers={"exec.deny[0]": "sigkill"})

    client = ControlPlaneClient("server:7443", "/var/lib/moray-agent", on_policy,
                                token=..., ca_pem=...)   # token + CA only for the first start
    client.start(); client.send(event_dict); client.stop()

See docs/controlplane.md.
"""

from moray.agent.controlplane.client import ControlPlaneClient
from moray.agent.controlplane.policies import ApplyResult, PolicyCache, VerifiedPolicy
from moray.agent.controlplane.spool import EventSpool

__all__ = ["ApplyResult", "ControlPlaneClient", "EventSpool", "PolicyCache", "VerifiedPolicy"]
