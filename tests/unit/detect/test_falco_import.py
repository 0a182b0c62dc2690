"""Falco rules in (agent/detect/falco_import.py): each operator, lists, macros, exceptions,
append/override in file order, every skip reason, never wider than Falco; the public
falco_rules.yaml (tests/fixtures/falco/rules) translated and loaded by moray's engine; the
`moray agent rules import` command. No privileges."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from moray.agent.detect.ctx import Ctx
from moray.agent.detect.falco_import import Result, translate_files, translate_texts
from moray.agent.detect.load import load, load_texts
from moray.agent.detect.state import State

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "falco" / "rules"
REPO = Path(__file__).resolve().parents[3]


def tr(*texts: str) -> Result:
    return translate_texts([(f"f{i}.yaml", t) for i, t in enumerate(texts)])


def cond(text: str, **kw: Any) -> str | None:
    """The translated condition of the single rule 'r' (None: skipped)."""
    res = tr(f"- rule: r\n  condition: {json.dumps(text)}\n"
             "  output: out\n  priority: WARNING\n")
    (r,) = res.rules or [None]
    return None if r is None else str(r["condition"])


def skipped(res: Result, name: str = "r") -> str:
    (s,) = [s for s in res.report.skipped if s.name == name and s.kind == "rule"]
    return "; ".join(s.reasons)


def exec_ev(comm: str = "grep", args: tuple[str, ...] = ("grep", "x"),
            container: dict[str, Any] | None = None, cwd: str = "/") -> Ctx:
    e: dict[str, Any] = {"type": "exec", "process": {"comm": comm, "exec_id": "1:1",
                                                      "args": list(args), "binary": "/bin/x",
                                                      "cwd": cwd},
                         "container": container}
    return Ctx(e, State(None))


def open_ev(path: str, access: str = "read", error: str | None = None,
            flags: tuple[str, ...] = ()) -> Ctx:
    e = {"type": "open", "process": {"comm": "cat", "exec_id": "1:1", "args": ["cat", path]},
         "container": None, "file": {"path": path, "access": access, "error": error,
                                     "result": -2 if error else 3, "flags": list(flags)}}
    return Ctx(e, State(None))


def rule_of(res: Result, name: str = "r") -> Any:
    rs = load_texts([("out.yaml", res.yaml())])
    (r,) = [r for r in rs.rules if r.name == name]
    return r


# --------------------------------------------------------------------------- operators

@pytest.mark.parametrize(("falco", "moray"), [
    ("evt.type = execve and proc.name = grep", "(evt.type = exec and proc.name = grep)"),
    ("evt.type=execve and proc.name != grep", "(evt.type = exec and proc.name != grep)"),
    ("evt.type in (execve, execveat) and proc.name in (a, b)",
     "(evt.type = exec and proc.name in (a, b))"),
    ("evt.type in (open,openat,openat2,creat) and fd.name pmatch (/etc)",
     "(evt.type = open and file.path pmatch (/etc))"),
    ("evt.type = execve and proc.cmdline startswith 'sh -c'",
     '(evt.type = exec and proc.name_cmdline startswith "sh -c")'),
    ("evt.type = execve and proc.args endswith x",
     "(evt.type = exec and proc.args_line endswith x)"),
    ("evt.type = execve and proc.pcmdline contains x",
     "(evt.type = exec and parent.name_cmdline contains x)"),
    ("evt.type = execve and proc.aname icontains X",
     "(evt.type = exec and proc.anames icontains X)"),
    ("evt.type = execve and proc.aname intersects (a, b)",
     "(evt.type = exec and proc.anames in (a, b))"),
    ("evt.type = execve and proc.exepath glob '/tmp/*'",
     "(evt.type = exec and proc.binary glob /tmp/*)"),
    ("evt.type = execve and proc.pname exists", "(evt.type = exec and parent.name exists)"),
    ("evt.type = execve and proc.pid > 1", "(evt.type = exec and proc.pid > 1)"),
    ("evt.type = execve and proc.pexepath regex '^/x'",
     '(evt.type = exec and parent.binary regex "^/x")'),
    ("evt.type = execve and not (proc.name = a or proc.name = b)",
     "(evt.type = exec and not (proc.name = a or proc.name = b))"),
    ("evt.type = open and fd.directory = /etc and fd.filename = shadow",
     "(evt.type = open and file.directory = /etc and file.name = shadow)"),
    ("evt.type = ptrace and evt.dir = > and evt.arg.request contains PTRACE_ATTACH",
     "((evt.type = syscall and syscall.name = ptrace) and syscall.request = PTRACE_ATTACH)"),
    ("evt.type = open and evt.arg.flags contains O_TRUNC",
     "(evt.type = open and file.flags = O_TRUNC)"),
    ("evt.type = open and evt.is_open_read = true and fd.num >= 0",
     "(evt.type = open and file.access in (read, read-write) and file.failed = false)"),
    ("evt.type = open and evt.is_open_write = true and fd.num = -1 and evt.res startswith E",
     "(evt.type = open and file.access in (write, read-write) and file.failed = true and "
     "(file.failed = true or syscall.failed = true))"),
    ("evt.type = open and evt.res = ENOENT",
     "(evt.type = open and (file.error in (ENOENT) or syscall.error in (ENOENT)))"),
    ("evt.type = execve and container.id != host", "(evt.type = exec and container.id exists)"),
    ("evt.type = execve and container.id = host",
     "(evt.type = exec and not container.id exists)"),
    ("evt.type = execve and proc.name != \"<NA>\"", "(evt.type = exec and proc.name exists)"),
    ("evt.type = execve and proc.exe endswith ssh and proc.pexe = java",
     "(evt.type = exec and proc.first_arg endswith ssh and parent.first_arg = java)"),
    ("evt.type = execve and proc.cwd startswith /tmp/",
     "(evt.type = exec and (proc.cwd startswith /tmp/ or proc.cwd = /tmp))"),
    ("evt.type = execve and proc.cwd in (/, /root/)",
     "(evt.type = exec and proc.cwd in (/, /root))"),
])
def test_operators_and_fields(falco: str, moray: str) -> None:
    assert cond(falco) == moray


def test_container_image_repository_matches_the_repository_with_any_tag_or_digest() -> None:
    res = tr("- rule: r\n  condition: evt.type = execve and container.image.repository in "
             "(docker.io/x/y, z)\n  output: o\n  priority: INFO\n")
    r = rule_of(res)
    for image, hit in (("docker.io/x/y", True), ("docker.io/x/y:1.2", True), ("z@sha256:ab", True),
                       ("docker.io/x/yy:1", False), ("z/w:1", False), ("zz", False)):
        assert bool(r.match(exec_ev(container={"id": "c", "image": image}))) is hit, image


def test_falco_arg_and_cmdline_fields_read_like_falco() -> None:
    """proc.args is argv after argv[0] as one string, proc.cmdline is the name then it."""
    res = tr("- rule: r\n  condition: evt.type = execve and proc.args startswith '-c /dev/shm' "
             "and proc.cmdline = 'sh -c /dev/shm/x'\n  output: o\n  priority: INFO\n")
    r = rule_of(res)
    assert r.match(exec_ev("sh", ("/bin/sh", "-c", "/dev/shm/x")))
    assert not r.match(exec_ev("sh", ("/bin/sh", "-c", "/tmp/x")))


# --------------------------------------------------------------------------- lists, macros

def test_lists_nested_quoted_and_empty() -> None:
    res = tr("""
- list: a
  items: [x, '"y z"', '"q \\"w\\""']
- list: b
  items: [a, v]
- list: empty
  items: []
- rule: r
  condition: evt.type = execve and proc.name in (b) and not proc.name in (empty)
  output: o
  priority: INFO
""")
    (r,) = res.rules
    assert r["condition"] == '(evt.type = exec and proc.name in (x, "y z", "q \\"w\\"", v))'


def test_macros_expand_append_and_override_in_file_order() -> None:
    base = """
- macro: m
  condition: proc.name = a
- list: l
  items: [x]
- rule: r
  condition: evt.type = execve and m and proc.pname in (l)
  output: o
  priority: NOTICE
  tags: [t1]
"""
    later = """
- macro: m
  condition: or proc.name = b
  append: true
- list: l
  items: [y]
  override:
    items: append
- rule: r
  condition: and proc.aname = c
  tags: [t2]
  priority: ERROR
  override:
    condition: append
    tags: append
    priority: replace
"""
    res = tr(base, later)
    (r,) = res.rules
    assert r["condition"] == ("(evt.type = exec and (proc.name = a or proc.name = b) and "
                              "parent.name in (x, y) and proc.anames = c)")
    assert r["tags"] == ["t1", "t2"] and r["priority"] == "ERROR"
    # the old style: append: true on a rule appends its condition
    res = tr(base, "- rule: r\n  condition: and proc.aname = c\n  append: true\n")
    assert res.rules[0]["condition"].endswith("and proc.anames = c)")
    # replace
    res = tr(base, "- rule: r\n  condition: evt.type = execve\n  override: {condition: replace}\n")
    assert res.rules[0]["condition"] == "evt.type = exec"
    # a redefinition replaces the rule as a whole
    res = tr(base, "- rule: r\n  condition: evt.type = open\n  output: p\n  priority: DEBUG\n")
    assert res.rules[0]["condition"] == "evt.type = open" and res.rules[0]["priority"] == "DEBUG"


def test_a_later_item_with_only_enabled_turns_a_rule_off_and_on() -> None:
    base = "- rule: r\n  condition: evt.type = execve\n  output: o\n  priority: INFO\n"
    (r,) = tr(base, "- rule: r\n  enabled: false\n").rules
    assert r["enabled"] is False and r["condition"] == "evt.type = exec"
    (r,) = tr(base, "- rule: r\n  enabled: false\n", "- rule: r\n  enabled: true\n").rules
    assert "enabled" not in r


def test_append_to_something_undefined_is_reported() -> None:
    res = tr("- rule: r\n  condition: and x\n  append: true\n"
             "- macro: m\n  condition: or y\n  append: true\n"
             "- list: l\n  items: [a]\n  append: true\n")
    kinds = {(s.kind, s.name) for s in res.report.skipped}
    assert {("rule", "r"), ("macro", "m"), ("list", "l")} <= kinds
    assert "not defined before" in skipped(res)


def test_enabled_priority_tags_output() -> None:
    res = tr("- rule: r\n  desc: d\n  condition: evt.type = execve\n  enabled: false\n"
             "  priority: info\n  tags: [a, T1059]\n"
             "  output: shell (user=%user.name proc=%proc.name parent=%proc.pname "
             "%container.info)\n")
    (r,) = res.rules
    assert r["enabled"] is False and r["priority"] == "INFORMATIONAL"
    assert r["tags"] == ["a", "T1059"] and r["desc"] == "d"
    assert r["output"] == ("shell (proc=%proc.name parent=%parent.name "
                           "container=%container.name image=%container.image)")
    assert load_texts([("out.yaml", res.yaml())]).rules == []  # loads; disabled


# --------------------------------------------------------------------------- exceptions

def test_exceptions_become_and_not() -> None:
    res = tr("""
- list: ok_images
  items: [img/a]
- rule: r
  condition: evt.type = execve and proc.name = sh
  output: o
  priority: INFO
  exceptions:
    - name: by_parent_and_image
      fields: [proc.pname, container.image]
      comps: [=, startswith]
      values:
        - [bash, img/a]
        - [node, img/b]
    - name: by_name
      fields: proc.pname
      values: [cron, anacron]
    - name: by_list
      fields: [proc.pname]
      comps: [in]
      values: [[ok_images]]
    - name: unused
      fields: [proc.name]
      values: []
""")
    (r,) = res.rules
    c = r["condition"]
    assert ("not ((parent.name = bash and container.image startswith img/a) or "
            "(parent.name = node and container.image startswith img/b))") in c
    assert "not parent.name in (cron, anacron)" in c and "not parent.name in (img/a)" in c
    assert "unused" not in c and c.count("not") == 3


def test_exception_values_appended_by_a_later_file() -> None:
    base = ("- rule: r\n  condition: evt.type = execve\n  output: o\n  priority: INFO\n"
            "  exceptions:\n    - {name: e, fields: [proc.name], values: [[a]]}\n")
    more = ("- rule: r\n  exceptions:\n    - {name: e, values: [[b]]}\n"
            "  override: {exceptions: append}\n")
    (r,) = tr(base, more).rules
    assert "not (proc.name = a or proc.name = b)" in r["condition"]


def test_an_exception_on_an_unsupported_field_skips_the_rule() -> None:
    """Dropping an exception would widen the rule: it is skipped, with the field named."""
    res = tr("- rule: r\n  condition: evt.type = execve\n  output: o\n  priority: INFO\n"
             "  exceptions:\n    - {name: e, fields: [user.name], values: [[root]]}\n")
    assert not res.rules
    assert "unsupported field user.name" in skipped(res)


# --------------------------------------------------------------------------- never wider

def test_unsupported_part_dropped_only_when_that_narrows() -> None:
    # in an `or` of a positive condition: dropped (the rule matches less)
    c = cond("evt.type = execve and (proc.name = a or user.name = root)")
    assert c == "(evt.type = exec and proc.name = a)"
    # a positive conjunct: cannot be dropped -> skipped
    res = tr("- rule: r\n  condition: evt.type = execve and proc.tty != 0\n  output: o\n"
             "  priority: INFO\n")
    assert not res.rules and "unsupported field proc.tty" in skipped(res)
    # under `not`, the unsupported test counts as true: the exclusion widens, the rule narrows
    c = cond("evt.type = execve and not (proc.pname = a and user.name = x)")
    assert c == "(evt.type = exec and not parent.name = a)"
    # ... but a bare negated unsupported test excludes everything -> skipped
    res = tr("- rule: r\n  condition: evt.type = execve and not user.name = root\n"
             "  output: o\n  priority: INFO\n")
    assert not res.rules and "unsupported field user.name" in skipped(res)
    assert "r" not in res.report.narrowed


def test_narrowed_rules_are_reported_with_what_was_dropped() -> None:
    res = tr("- macro: m\n  condition: proc.aname[2] = x\n"
             "- rule: r\n  condition: evt.type = execve and (proc.name = a or m)\n"
             "  output: o\n  priority: INFO\n")
    assert res.report.narrowed["r"] == ["m: unsupported field proc.aname[2]"]
    assert any(s.kind == "macro" and s.name == "m" for s in res.report.skipped)
    assert any("translated rule 'r' without: m: unsupported field proc.aname[2]" in line
               for line in res.report.lines())


def test_never_true_and_dir_are_constants() -> None:
    c = cond("evt.type = execve and evt.dir = < and not evt.num = 0")
    assert c == "evt.type = exec"
    res = tr("- rule: r\n  condition: evt.type = execve and evt.num = 0\n  output: o\n"
             "  priority: INFO\n")
    assert not res.rules and "condition is never true" in skipped(res)


@pytest.mark.parametrize(("falco", "reason"), [
    ("evt.type = execve and user.name = root", "unsupported field user.name"),
    ("evt.type = execve and proc.name bcontains 414243", "unsupported operator bcontains"),
    ("evt.type = execve and proc.name iglob 'A*'", "unsupported operator iglob"),
    ("evt.type = sendto and proc.name = x", "event type sendto not observed by moray"),
    ("evt.type = open and fd.typechar = 'f'", "unsupported field fd.typechar"),
    ("evt.type = execve and container.id = abc", "unsupported field container.id"),
    ("evt.type = execve and proc.cwd contains tmp", "unsupported comparison proc.cwd"),
    ("evt.type = execve and evt.res = SUCCESS and evt.res > 3", "unsupported comparison evt.res"),
    ("evt.type = execve and proc.name = (", "does not parse"),
    ("evt.type = execve and no_such_macro", "undefined macro 'no_such_macro'"),
    ("proc.name = x", "moray's rule compiler refused"),
])
def test_skip_reasons(falco: str, reason: str) -> None:
    res = tr(f"- rule: r\n  condition: {json.dumps(falco)}\n  output: o\n"
             "  priority: INFO\n")
    assert not res.rules
    assert reason in skipped(res), skipped(res)


def test_partly_observed_event_types_keep_the_observed_ones() -> None:
    res = tr("- rule: r\n  condition: evt.type in (dup, dup2, dup3) and proc.name = sh\n"
             "  output: o\n  priority: INFO\n")
    (r,) = res.rules
    assert r["condition"] == ("(((evt.type = syscall and syscall.name = dup2) or "
                              "(evt.type = syscall and syscall.name = dup3)) and proc.name = sh)")
    assert res.report.narrowed["r"] == ["event type dup not observed by moray"]


def test_a_rule_named_like_a_default_rule_is_noted() -> None:
    res = tr("- rule: Reverse shell\n  condition: evt.type = execve\n  output: o\n"
             "  priority: INFO\n")
    assert res.rules and any("name of a moray default rule" in n for n in res.report.notes)


def test_other_sources_and_items_are_reported() -> None:
    res = tr("- required_engine_version: 0.31.0\n"
             "- required_plugin_versions: [{name: k8saudit, version: 0.1.0}]\n"
             "- rule: audit\n  source: k8s_audit\n  condition: ka.verb = create\n"
             "  output: o\n  priority: INFO\n- frobnicate: 1\n- just a string\n")
    assert "source k8s_audit not observed by moray" in skipped(res, "audit")
    assert any("unknown item keys" in "; ".join(s.reasons) for s in res.report.skipped)
    assert any("not a mapping" in "; ".join(s.reasons) for s in res.report.skipped)
    assert any("required_plugin_versions" in n for n in res.report.notes)
    assert tr(": not yaml: [").report.skipped[0].reasons[0].startswith("not YAML")


def test_translated_rule_matches_what_falco_would() -> None:
    res = tr("""
- list: grep_binaries
  items: [grep, egrep]
- macro: spawned_process
  condition: (evt.type in (execve, execveat) and evt.dir=<)
- macro: never_true
  condition: (evt.num=0)
- macro: ok
  condition: (never_true)
- rule: r
  condition: >
    spawned_process and proc.name in (grep_binaries)
    and proc.args icontains "BEGIN PRIVATE" and not ok
  output: o
  priority: INFO
""")
    r = rule_of(res)
    assert r.match(exec_ev("grep", ("grep", "-r", "BEGIN PRIVATE", "/")))
    assert r.match(exec_ev("egrep", ("egrep", "begin", "private")))   # args as one string
    assert not r.match(exec_ev("grep", ("grep", "begin")))
    assert not r.match(exec_ev("sed", ("sed", "BEGIN PRIVATE")))


# --------------------------------------------------------------------------- real file

def test_public_falco_rules_file() -> None:
    """falcosecurity/rules falco_rules.yaml: what translates, and every rule left out named
    with its reason; the output loads in moray's engine beside the default rules."""
    path = FIXTURES / "falco_rules.yaml"
    res = translate_files([str(path)])
    falco_rules = [it["rule"] for it in yaml.safe_load(path.read_text()) if "rule" in it]
    rep = res.report
    skipped_rules = {s.name: "; ".join(s.reasons) for s in rep.skipped if s.kind == "rule"}
    assert sorted(rep.translated + list(skipped_rules)) == sorted(falco_rules)  # none lost
    assert sorted(rep.translated) == sorted([
        "Run shell untrusted", "Netcat Remote Code Execution in Container",
        "Search Private Keys or Passwords", "Remove Bulk Data from Disk",
        "PTRACE attached to process", "PTRACE anti-debug attempt", "Find AWS Credentials",
        "Execution from /dev/shm"])
    expect = {
        "Read sensitive file untrusted": "unsupported field fd.typechar",
        "Terminal shell in container": "unsupported field proc.tty",
        "System user interactive": "unsupported field user.name",
        "Contact K8S API Server From Container": "unsupported field fd.typechar",
        "Create Symlink Over Sensitive Files": "unsupported field evt.arg.target",
        "Redirect STDOUT/STDIN to Network Connection in Container":
            "event type dup not observed by moray",
        "Linux Kernel Module Injection Detected": "unsupported field thread.cap_effective",
        "Debugfs Launched in Privileged Container": "unsupported field container.privileged",
        "Drop and execute new binary in container":
            "unsupported field proc.is_exe_upper_layer",
        "Fileless execution via memfd_create": "unsupported field proc.is_exe_from_memfd",
        "Disallowed SSH Connection Non Standard Port": "event type sendto not observed",
    }
    for name, why in expect.items():
        assert why in skipped_rules[name], (name, skipped_rules[name])
    assert len(skipped_rules) == 17
    assert set(rep.narrowed) == {"Run shell untrusted"}
    summary = rep.lines()[-1]
    assert summary.startswith("8 rules translated, 17 skipped"), summary
    # loads in moray's engine with nothing refused
    rs = load_texts([("falco.yaml", res.yaml([str(path)]))])
    assert sorted(r.name for r in rs.rules) == sorted(rep.translated)
    shm = next(r for r in rs.rules if r.name == "Execution from /dev/shm")
    assert shm.match(exec_ev("sh", ("sh", "-c", "/dev/shm/x")))
    assert shm.match(exec_ev("x", ("/dev/shm/x",)))                       # proc.exe
    assert shm.match(exec_ev("x", ("./x",), cwd="/dev/shm"))             # proc.cwd
    assert not shm.match(exec_ev("x", ("./x",), cwd="/dev/shmx"))
    assert not shm.match(exec_ev("sh", ("sh", "-c", "/dev/shm/x"),
                                 container={"id": "c", "image": "docker.io/sysdig/sysdig:1"}))
    run_shell = next(r for r in rs.rules if r.name == "Run shell untrusted")
    assert "proc.anames in (nginx" in str(
        next(x for x in res.rules if x["rule"] == "Run shell untrusted")["condition"])
    assert run_shell.types == {"exec"}


def test_cli_import_writes_a_loadable_file_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "falco.yaml"
    p = subprocess.run([sys.executable, "-m", "moray.cli", "agent", "rules", "import",
                        str(FIXTURES / "falco_rules.yaml"), "-o", str(out)],
                       capture_output=True, text=True, cwd=REPO, check=False, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "skipped rule 'Terminal shell in container': unsupported field proc.tty" in p.stderr
    assert "8 rules translated, 17 skipped" in p.stderr
    text = out.read_text()
    assert text.startswith("# moray detection rules translated from Falco rules")
    assert "# skipped rule 'Read sensitive file untrusted'" in text
    rs = load([out])  # with the default rules, as `moray agent run --rules` loads it
    assert "Search Private Keys or Passwords" in {r.name for r in rs.rules}
    strict = subprocess.run([sys.executable, "-m", "moray.cli", "agent", "rules", "import",
                             "--strict", str(FIXTURES / "falco_rules.yaml")],
                            capture_output=True, text=True, cwd=REPO, check=False, timeout=120)
    assert strict.returncode == 1 and strict.stdout.startswith("# moray detection rules")
    missing = subprocess.run([sys.executable, "-m", "moray.cli", "agent", "rules", "import",
                              str(tmp_path / "nope.yaml")],
                             capture_output=True, text=True, cwd=REPO, check=False, timeout=120)
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def test_hostile_files_are_bounded_and_reported() -> None:
    """Macros or lists that multiply, deep nesting, self-reference: reported, not run away."""
    macros = "".join(f"- macro: m{i}\n  condition: m{i + 1} and m{i + 1}\n" for i in range(15))
    macros += "- macro: m15\n  condition: proc.name = x\n"
    lists = "".join(f"- list: l{i}\n  items: [l{i + 1}, l{i + 1}, l{i + 1}]\n"
                    for i in range(10))
    lists += "- list: l10\n  items: [a]\n- list: self\n  items: [self, b]\n"
    deep = "(" * 1000 + "proc.name = x" + ")" * 1000
    res = tr(macros + lists + f"""
- rule: macros
  condition: evt.type = execve and m0
  output: o
  priority: INFO
- rule: lists
  condition: evt.type = execve and proc.name in (l0)
  output: o
  priority: INFO
- rule: deep
  condition: evt.type = execve and {deep}
  output: o
  priority: INFO
- rule: self
  condition: evt.type = execve and proc.name in (self)
  output: o
  priority: INFO
- macro: loop
  condition: evt.type = execve and loop
- rule: loop
  condition: loop
  output: o
  priority: INFO
""")
    assert "expands to more than" in skipped(res, "macros")
    assert "expands to more than" in skipped(res, "lists")
    assert "nested more than" in skipped(res, "deep")
    assert "refers to itself" in skipped(res, "loop")
    (r,) = res.rules
    assert r["rule"] == "self" and r["condition"] == "(evt.type = exec and proc.name in (self, b))"
