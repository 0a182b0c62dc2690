"""``moray micro --server``: the MicroEnforcer's link to the control plane.

Owns the policies pushed by the server, by name, and when they reach the supervisor:

1. before the workload starts (``fetch``), in a forked helper process (the supervisor
   must have no thread when it clones the workload; gRPC starts threads): the agent's
   client enrols (kind "micro") if there is no identity yet, opens the policy stream
   asking for the end-of-initial-sync marker (``PolicyHello.sync_marker``), verifies and
   records every policy selecting this enforcer, and exits once the marker arrived. The
   parent then reads the verified policies from the client's cache (``held``); the
   filter is built from them and the policy files. No marker in time (a server from
   before the marker, a gateway, no connection): the workload does not start.
2. once the workload runs (``Link.start``, after the clone): the same client, for events
   and heartbeats, and for later pushes: a changed, new or removed policy is applied live
   when the filter it needs is the installed one (only supervisor-decided rules changed:
   exec, file and egress paths, a mode), else acknowledged FAILED with "needs restart:
   ..." (``Supervisor.update``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moray.agent.controlplane import ApplyResult, ControlPlaneClient, PolicyCache, VerifiedPolicy
from moray.agent.controlplane.identity import load_identity
from moray.agent.controlplane.policies import PolicyVerifier
from moray.api.imageverdicts import VERDICTS_KIND
from moray.api.policy.load import PolicyError, load_text
from moray.api.policy.model import Policy
from moray.errors import ConfigError

log = logging.getLogger(__name__)

KIND = "micro"


def parse(policy: VerifiedPolicy) -> list[Policy]:
    """The runtime policies of a pushed document (raises PolicyError)."""
    return load_text(json.dumps(policy.document), f"<server:{policy.name}>")


def make_client(args: Mapping[str, Any], on_policy: Callable[[VerifiedPolicy], ApplyResult]
                ) -> ControlPlaneClient:
    """The agent's client as the MicroEnforcer uses it: kind "micro", label
    enforcer=micro, asking for the end-of-sync marker; starts nothing."""
    labels = dict(kv.split("=", 1) for kv in args["label"] if "=" in kv)
    labels["enforcer"] = KIND
    ca_pem = Path(args["ca"]).read_bytes() if args["ca"] else None
    return ControlPlaneClient(
        args["server"], args["data_dir"], on_policy,
        token=args["enroll_token"] or os.environ.get("MORAY_ENROLL_TOKEN"), ca_pem=ca_pem,
        ca_sha256=args["ca_sha256"], enroll_server=args["enroll_server"], labels=labels,
        hostname=args["node"], kind=KIND, sync_marker=True)


def _accept(policy: VerifiedPolicy) -> ApplyResult:
    """The helper's hook: a document the MicroEnforcer can parse is recorded (enforced
    by the parent before the workload starts); the image-verdict list is not used."""
    if policy.kind == VERDICTS_KIND:
        return ApplyResult(ok=False, error="moray micro does not use the image-verdict list")
    if not policy.removed:
        try:
            parse(policy)
        except PolicyError as err:
            return ApplyResult(ok=False, error=str(err))
    return ApplyResult(ok=True)


def fetch(args: Mapping[str, Any], timeout: float) -> None:
    """Run the initial sync in a forked helper (threads live and die there); raises
    ConfigError when it did not complete within ``timeout`` seconds."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the helper
        code = 1
        try:
            client = make_client(args, _accept)
            client.start()
            code = 0 if client.synced.wait(timeout) else 3
            client.stop(timeout=2.0)
        except BaseException:
            log.exception("moray micro: fetching the policies")
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        why = (f"no end-of-sync marker within {timeout} s: no connection, or a server or "
               "gateway that does not send one") if code == 3 else "the helper failed"
        raise ConfigError(f"moray micro: the policies of {args['server']} were not fetched "
                          f"({why}); the workload is not started")


def held(data_dir: str | os.PathLike[str]) -> dict[str, list[Policy]]:
    """Name -> runtime policies of the verified policies the client recorded."""
    identity = load_identity(Path(data_dir) / "identity")
    if identity is None:
        return {}
    cache = PolicyCache(Path(data_dir) / "policies")
    verifier = PolicyVerifier(identity.policy_public_key, identity.agent_id)
    out: dict[str, list[Policy]] = {}
    for policy in cache.load(verifier):
        if policy.kind != VERDICTS_KIND and not policy.removed:
            out[policy.name] = parse(policy)
    return out


class Link:
    """The live side: pushed policies by name over the ``--policy`` files' ones, applied
    to the supervisor as they come."""

    def __init__(self, files: Sequence[Policy], pushed: Mapping[str, list[Policy]],
                 update: Callable[[Sequence[Policy]], str | None]) -> None:
        self.files = tuple(files)
        self.pushed = dict(pushed)
        self.update = update
        self._lock = threading.Lock()

    def policies(self) -> list[Policy]:
        return [*self.files, *(p for name in sorted(self.pushed) for p in self.pushed[name])]

    def __call__(self, policy: VerifiedPolicy) -> ApplyResult:
        if policy.kind == VERDICTS_KIND:
            return ApplyResult(ok=False, error="moray micro does not use the image-verdict list")
        with self._lock:
            try:
                new = [] if policy.removed else parse(policy)
            except PolicyError as err:
                return ApplyResult(ok=False, error=str(err))
            if self.pushed.get(policy.name, [] if policy.removed else None) == new:
                return ApplyResult(ok=True)      # what the filter was built from
            wanted = dict(self.pushed)
            if policy.removed:
                wanted.pop(policy.name, None)
            else:
                wanted[policy.name] = new
            before, self.pushed = self.pushed, wanted
            why = self.update(self.policies())
            if why is not None:
                self.pushed = before
                log.warning("pushed policy not applied", extra={
                    "policy": policy.name, "version": policy.version, "reason": why})
                return ApplyResult(ok=False, error=why)
            log.info("pushed policy applied live", extra={
                "policy": policy.name, "version": policy.version, "removed": policy.removed})
            return ApplyResult(ok=True)
