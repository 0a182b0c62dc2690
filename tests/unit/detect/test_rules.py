"""Rule language: parsing, validation errors (file:line:field), lists, macros, exceptions,
append, priorities and MITRE tags, event-type indexing. No privileges."""

from __future__ import annotations

import pytest

from moray.agent.detect.load import load, load_texts
from moray.agent.detect.model import Priority, RuleError


def one(text: str) -> RuleError:
    with pytest.raises(RuleError) as ei:
        load_texts([("custom.yaml", text)])
    return ei.value


def test_default_ruleset_loads_and_indexes() -> None:
    rs = load([])
    assert len(rs.rules) >= 29
    assert {"exec", "open", "connect", "syscall"} <= set(rs.by_type)
    for r in rs.rules:
        assert r.mitre and all(t.startswith("T") for t in r.mitre), r.name
        assert r.desc, r.name
    assert "/usr/bin/" in rs.watch and "/var/spool/cron/" in rs.watch
    assert "/root/.aws/" in rs.watch  # ~/ expanded to homes


def test_unknown_field_is_an_error_with_line_and_hint() -> None:
    err = one("- rule: r\n  priority: ERROR\n  condition: evt.type = exec and proc.nmae = sh\n")
    (p,) = err.problems
    assert p.file == "custom.yaml" and p.line == 3
    assert "unknown field or macro 'proc.nmae'" in p.message and "proc.name" in p.message


def test_unknown_rule_key_is_an_error() -> None:
    err = one("- rule: r\n  condition: evt.type = exec\n  severity: high\n")
    assert "unknown field" in str(err) and "severity" in str(err) and ":3:" in str(err)


@pytest.mark.parametrize(("cond", "msg"), [
    ("evt.type = exec and", "expected a field"),
    ("evt.type = exec and (proc.name = sh", "missing ')'"),
    ("evt.type = nope", "unknown event type"),
    ("evt.type = exec and proc.pid startswith 1", "needs a text field"),
    ("evt.type = exec and proc.name > 3", "needs a number field"),
    ("evt.type = exec and proc.pid = abc", "is a number"),
    ("evt.type = exec and proc.name = (a, b)", "takes one value"),
    ("evt.type = exec and proc.name regex '('", "bad regex"),
    ("evt.type = connect and net.daddr cidr 10.0.0.0/33", "bad CIDR"),
    ("proc.name = sh", "does not restrict the event type"),
    ("evt.type = exec and proc.name sh", "expected an operator"),
])
def test_condition_errors(cond: str, msg: str) -> None:
    err = one(f"- rule: r\n  condition: \"{cond}\"\n")
    assert msg in str(err), str(err)


def test_bad_priority_mitre_response_throttle_watch() -> None:
    err = one("- rule: r\n  condition: evt.type = exec\n  priority: LOUD\n  mitre: [X1]\n"
              "  response: nuke\n  throttle: -1\n  watch: [relative/]\n")
    text = str(err)
    for m in ("unknown priority", "ATT&CK technique", "unknown response", "throttle",
              "absolute path"):
        assert m in text
    assert len(err.problems) == 5


def test_macro_cycle_and_broken_macro() -> None:
    err = one("- macro: a\n  condition: b\n- macro: b\n  condition: a\n"
              "- rule: r\n  condition: evt.type = exec and a\n")
    assert "refers to itself" in str(err)
    err = one("- macro: m\n  condition: proc.nope = 1\n")
    assert "macro 'm'" in str(err) and "proc.nope" in str(err)


def test_lists_macros_exceptions_append() -> None:
    rs = load_texts([("a.yaml", """
- list: shells
  items: [sh, bash]
- macro: in_ctr
  condition: container.id exists
- rule: shell
  condition: evt.type = exec and in_ctr and proc.name in (shells)
  priority: NOTICE
  mitre: [T1059.004]
  tags: [shell]
"""), ("b.yaml", """
- list: shells
  items: [zsh]
  append: true
- rule: shell
  append: true
  priority: CRITICAL
  exceptions:
    - {name: ci, condition: container.image startswith ci/}
""")])
    (r,) = rs.rules
    assert r.priority is Priority.CRITICAL and r.types == {"exec"}
    from moray.agent.detect.ctx import Ctx
    from moray.agent.detect.state import State

    def ev(name: str, image: str) -> Ctx:
        return Ctx({"type": "exec", "process": {"comm": name, "exec_id": "1:1"},
                    "container": {"id": "c", "image": image}}, State(None))
    assert r.match(ev("zsh", "web:1"))
    assert not r.match(ev("zsh", "ci/runner:1"))
    assert not r.match(ev("python3", "web:1"))


def test_disable_and_append_errors() -> None:
    rs = load_texts([("a.yaml", "- rule: r\n  condition: evt.type = exec\n"),
                     ("b.yaml", "- rule: r\n  append: true\n  enabled: false\n")])
    assert rs.rules == []
    err = one("- rule: r\n  append: true\n  exceptions: []\n")
    assert "no earlier rule" in str(err)
    err = one("- list: l\n  items: [a]\n  append: true\n")
    assert "no earlier list" in str(err)


def test_output_template_unknown_field() -> None:
    err = one("- rule: r\n  condition: evt.type = exec\n  output: \"%proc.nope\"\n")
    assert "unknown field %proc.nope" in str(err)


def test_yaml_errors_name_the_line() -> None:
    err = one("- rule: r\n  condition: [unclosed\n")
    assert "not valid YAML" in str(err)
    err = one("rule: r\n")
    assert "a rule file is a list" in str(err)


def test_syscall_rules_indexed_by_name() -> None:
    rs = load([])
    assert {r.name for r in rs.by_syscall["ptrace"]} == {"Ptrace attach or traceme"}
    assert "Mount in container" in {r.name for r in rs.by_syscall["umount2"]}
