"""Start-up inside the function process: load the compiled policy, install the audit
hook, wrap the resolvers. Called by the layer's ``sitecustomize`` (imported by Python's
``site`` before ``-m awslambdaric`` or the runtime's bootstrap, so before the handler's
module is imported).

Environment (set by the ``moray-nano`` exec wrapper or the function's configuration):

- ``MORAY_NANO_POLICY``: the policy file: compiled JSON (``moray nano compile``), or a
  policy YAML where the full moray package and PyYAML are importable (a container image
  function with moray installed); default ``$MORAY_NANO_HOME/policy.json`` (the layer's);
- ``MORAY_NANO_MODE``: ``enforce`` or ``monitor``, overrides the policy's ``spec.mode``;
- ``AWS_LAMBDA_RUNTIME_API``: the runtime API's ``host:port``, always allowed egress (the
  runtime client's own requests).

Fail closed: a policy that cannot be read or is malformed stops the process (exit 1, one
line on stderr and one event on stdout), so a function never runs silently unguarded.

Standard library only (runs inside the function).
"""

from __future__ import annotations

import json
import os
import socket
import sys

from .events import Reporter
from .hook import Hook
from .rules import Rules

TYPE_CHECKING = False  # typing is not imported at run time (cold start: rules.py)
if TYPE_CHECKING:
    from typing import Any

ENV_POLICY = "MORAY_NANO_POLICY"
ENV_MODE = "MORAY_NANO_MODE"
ENV_HOME = "MORAY_NANO_HOME"
POLICY_FILE = "policy.json"
EXIT_POLICY = 1

# whether this process has its hook; the hook itself is kept nowhere a module attribute
# would hand it to the function's code
_installed = False


class BootError(Exception):
    """The policy cannot be used; the message says which file and why."""


def policy_path(environ: dict[str, str] | os._Environ[str]) -> str:
    path = environ.get(ENV_POLICY)
    if path:
        return path
    home = environ.get(ENV_HOME) or os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    return os.path.join(home, POLICY_FILE)


def load(path: str) -> dict[str, Any]:
    """The compiled form of the policy at ``path`` (JSON, or YAML compiled here)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as err:
        raise BootError(f"cannot read the function policy {path}: {err}") from err
    if data.lstrip()[:1] == b"{":
        try:
            doc = json.loads(data)
        except ValueError as err:
            raise BootError(f"{path}: not valid JSON: {err}") from err
        if not isinstance(doc, dict):
            raise BootError(f"{path}: not a compiled function policy")
        return doc
    try:
        from moray.nano.policy import compile_file  # the full moray package
    except ImportError as err:
        raise BootError(f"{path}: a YAML policy needs the moray package and PyYAML here "
                        f"({err}); compile it with 'moray nano compile' and ship the "
                        f"JSON") from err
    try:
        return compile_file(path)
    except Exception as err:  # a ValidationError listing file:line problems
        raise BootError(str(err)) from err


def install(environ: dict[str, str] | os._Environ[str] | None = None) -> Hook:
    """Install the hook for this process (once; a second call is an error)."""
    global _installed
    if _installed:
        raise BootError("the function policy is already installed in this process")
    env = os.environ if environ is None else environ
    doc = load(policy_path(env))
    mode = env.get(ENV_MODE)
    if mode:
        doc = {**doc, "mode": mode}
    try:
        rules = Rules.from_json(doc)
    except ValueError as err:
        raise BootError(f"{policy_path(env)}: {err}") from err
    api = env.get("AWS_LAMBDA_RUNTIME_API", "")
    host, _, port = api.rpartition(":")
    if host and port.isdigit():
        rules = rules.allowing(host.strip("[]"), int(port))
    hook = Hook(rules, Reporter(rules.name, environ=dict(env)), environ=dict(env))
    hook.wrap_resolvers(socket)
    import _posixsubprocess  # loaded now, so that a later fresh copy is an import event

    hook.wrap_fork_exec(_posixsubprocess)
    # bytecode caches are written beside the code (/var/task: read-only on Lambda):
    # each attempt would be a denied write outside /tmp
    sys.dont_write_bytecode = True
    sys.addaudithook(hook)
    _installed = True
    return hook


def main() -> None:
    """The layer's ``sitecustomize``: install, or stop the process (fail closed)."""
    try:
        install()
    except BootError as err:
        line = json.dumps({"type": "enforce", "enforcer": "nano", "enforcement": {
            "action": "stopped", "kind": "policy", "tier": "audit-hook",
            "note": f"function stopped: {err}"}})
        os.write(1, (line + "\n").encode())
        os.write(2, f"moray nano: function stopped: {err}\n".encode())
        os._exit(EXIT_POLICY)


__all__ = ["ENV_HOME", "ENV_MODE", "ENV_POLICY", "BootError", "install", "load", "main",
           "policy_path"]
