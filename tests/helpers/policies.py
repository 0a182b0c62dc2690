"""Policy documents and event predicates shared by the enforcement tests."""

from __future__ import annotations

from tests.helpers.agent_proc import enforcement


def ctr_policy(name: str, names: str, body: str, mode: str = "enforce") -> str:
    """A RuntimePolicy scoped to containers whose name matches the glob *names*; *body* is
    the YAML of the spec's rules (indented by the caller's own lines)."""
    return (f"apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {{name: {name}}}\n"
            f"spec:\n  scope: {{containers: {{names: ['{names}']}}}}\n  mode: {mode}\n"
            + "".join(f"  {line}\n" for line in body.strip().splitlines()))


def for_container(ev: dict[str, object], container: str, kind: str, action: str) -> bool:
    """*ev* is an enforce event about *container* of that kind and action."""
    e = enforcement(ev)  # type: ignore[arg-type]
    c = ev.get("container")
    return (ev.get("type") == "enforce" and isinstance(c, dict) and c.get("id") == container
            and e.get("kind") == kind and e.get("action") == action)
