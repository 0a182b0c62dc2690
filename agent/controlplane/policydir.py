"""An ``on_policy`` hook for an agent that enforces the policies of a directory
(``moray-agent run --policy-dir DIR``, docs/policy.md): each pushed policy is written to
``DIR/cp-<name>.json`` (atomically), a removal deletes that file, and the hook waits until
the agent's status file (``--policy-status``) shows the policy live with the document's
digest, or an error for the file. Per-rule tiers come from the tiers the agent reports
per rule kind (monitor-mode policies and ``files.monitor`` rules are ``monitor``).

Files written here belong to the control plane (``cp-`` prefix); policies written by hand
beside them are left alone. The image-verdict list (issue 16, payload kind
``image-verdicts``) is written to ``DIR/.image-verdicts.json`` (a dot file: not a policy),
and the hook waits until the status file shows that list (its SHA-256) loaded, or gone
after a removal.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moray.agent.controlplane.policies import ApplyResult, VerifiedPolicy
from moray.agent.policy.engine import IMAGE_LIST_FILE
from moray.api.imageverdicts import VERDICTS_KIND

PREFIX = "cp-"


def digest(document: dict[str, Any]) -> str:
    """The agent's digest of a document (api/policy/load.py hashes its canonical JSON)."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()
                          ).hexdigest()


def rule_tiers(document: dict[str, Any], tiers: dict[str, str]) -> dict[str, str]:
    """Rule id (as the agent names rules in its events) -> enforcement tier."""
    spec = document.get("spec", {})
    monitor = spec.get("mode") == "monitor"

    def tier(kind: str) -> str:
        return "monitor" if monitor else str(tiers.get(kind, "unknown"))

    out: dict[str, str] = {}
    ex = spec.get("exec", {}) or {}
    for path in ex.get("deny", []) or []:
        out[f"exec.deny: {path}"] = tier("exec")
    if ex.get("allow") is not None:
        out["exec.allow"] = tier("exec")
    if ex.get("drift") == "block":
        out["exec.drift: block"] = tier("exec")
    files = spec.get("files", {}) or {}
    for label, rules in (("files.deny", files.get("deny", [])),
                         ("files.monitor", files.get("monitor", []))):
        for rule in rules or []:
            target = rule.get("path") or rule.get("prefix")
            out[f"{label}: {target} ({rule.get('access', 'any')})"] = (
                "monitor" if label == "files.monitor" else tier("file"))
    egress = (spec.get("network", {}) or {}).get("egress", {}) or {}
    for label in ("deny", "allow"):
        for rule in egress.get(label, []) or []:
            text = rule if isinstance(rule, str) else json.dumps(rule, sort_keys=True)
            out[f"network.egress.{label}: {text}"] = tier("network")
    for name in (spec.get("syscalls", {}) or {}).get("deny", []) or []:
        out[f"syscalls.deny: {name}"] = tier("syscall")
    return out


class PolicyDirSink:
    def __init__(self, policy_dir: str | os.PathLike[str],
                 status_file: str | os.PathLike[str] | None = None, *, timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dir = Path(policy_dir)
        self.status_file = Path(status_file) if status_file else None
        self.timeout = timeout
        self.clock = clock

    def path(self, name: str) -> Path:
        return self.dir / f"{PREFIX}{name}.json"

    def __call__(self, policy: VerifiedPolicy) -> ApplyResult:
        if policy.kind == VERDICTS_KIND:
            return self._image_list(policy)
        target = self.path(policy.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        if policy.removed:
            target.unlink(missing_ok=True)
        else:
            tmp = target.with_name(f".{target.name}.tmp")   # dot files are not loaded
            with open(tmp, "w") as f:
                json.dump(policy.document, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        if self.status_file is None:
            return ApplyResult(ok=True)
        return self._wait_live(policy, target)

    def _wait_live(self, policy: VerifiedPolicy, target: Path) -> ApplyResult:
        want = None if policy.removed else digest(policy.document)[:12]
        deadline = self.clock() + self.timeout
        while self.clock() < deadline:
            status = self._status()
            if status is not None:
                live = {p["name"]: p for p in status.get("policies", [])}
                errors = [str(e) for e in status.get("errors", []) if str(target) in str(e)]
                if errors:
                    return ApplyResult(ok=False, error="; ".join(errors))
                if want is None and policy.name not in live:
                    return ApplyResult(ok=True)
                if want is not None and live.get(policy.name, {}).get("digest") == want:
                    return ApplyResult(ok=True, tiers=rule_tiers(
                        policy.document, dict(status.get("tiers", {}))))
            time.sleep(0.02)
        return ApplyResult(ok=False, error=f"the agent did not publish {policy.name} "
                                           f"v{policy.version} within {self.timeout:.0f}s")

    def _image_list(self, policy: VerifiedPolicy) -> ApplyResult:
        target = self.dir / IMAGE_LIST_FILE
        self.dir.mkdir(parents=True, exist_ok=True)
        want: str | None = None
        if policy.removed:
            target.unlink(missing_ok=True)
        else:
            data = json.dumps(policy.document, sort_keys=True).encode()
            want = hashlib.sha256(data).hexdigest()
            tmp = target.with_name(f"{target.name}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        if self.status_file is None:
            return ApplyResult(ok=True)
        deadline = self.clock() + self.timeout
        while self.clock() < deadline:
            status = self._status()
            if status is not None:
                errors = [str(e) for e in status.get("errors", []) if str(target) in str(e)]
                if errors:
                    return ApplyResult(ok=False, error="; ".join(errors))
                live = status.get("image_verdicts")
                if (live or {}).get("sha256") == want or (want is None and live is None):
                    return ApplyResult(ok=True)
            time.sleep(0.02)
        return ApplyResult(ok=False, error=f"the agent did not load the image-verdict list "
                                           f"v{policy.version} within {self.timeout:.0f}s")

    def _status(self) -> dict[str, Any] | None:
        assert self.status_file is not None
        try:
            data = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
