"""Alert text never carries a bare placeholder: every field an output template names is
filled, or the text says why it is absent (agent/detect/fields.py ABSENT). The cases of
issue 21: "result <NA>" on every successful open, "(<NA>, result ENOSYS)" for
init_module. No privileges."""

from __future__ import annotations

from typing import Any

import pytest

from moray.agent.detect.ctx import Ctx
from moray.agent.detect.engine import Detector
from moray.agent.detect.load import load, load_texts
from moray.agent.detect.state import State
from moray.agent.enrich.proctree import ProcessTree

DEFAULTS = load([])


def bare(t: str, syscall: str | None = None, container: dict[str, Any] | None = None,
         **extra: Any) -> dict[str, Any]:
    """An event of type `t` with what every event has and nothing else (no parent seen,
    empty type section): every optional field a template may name is missing."""
    e: dict[str, Any] = {
        "type": t, "time": "2026-01-01T00:00:00.000000001Z", "node": "n",
        "process": {"pid": 5, "tid": 5, "exec_id": "5:1", "binary": "/usr/bin/x",
                    "args": ["x", "-y"], "comm": "x", "uid": 0, "cgroup_id": 1},
        "parent": {"pid": 4, "exec_id": "4:1", "binary": None}, "container": container}
    if t == "open":
        e["file"] = {"path": "/etc/shadow", "flags": ["O_RDONLY"], "access": "read",
                     "result": 0, "error": None, "fd": 3}
    elif t in ("connect", "accept", "listen", "send"):
        e["network"] = {"family": "ipv4", "protocol": "tcp", "saddr": None, "sport": None,
                        "daddr": None, "dport": None}
    elif t == "syscall":
        e["syscall"] = {"name": syscall or "mount", "nr": 0, "result": 0, "error": None}
    e.update(extra)
    return e


def render(rule: Any, e: dict[str, Any]) -> str:
    text: str = rule.output(Ctx(e, State(ProcessTree(proc="/nonexistent"), "/nonexistent")))
    return text


@pytest.mark.parametrize("rule", DEFAULTS.rules, ids=lambda r: r.name)
def test_no_default_template_prints_a_placeholder(rule: Any) -> None:
    ctrs = (None, {"id": "c0ffee0123456789", "name": None, "image": None, "runtime": "runc"})
    for t in sorted(rule.types):
        for name in sorted(rule.syscalls or {"mount"}) if t == "syscall" else [None]:
            for ctr in ctrs:
                text = render(rule, bare(t, name, ctr))
                assert "<NA>" not in text and "None" not in text, (t, name, text)


def test_successful_open_says_success() -> None:
    det = Detector(DEFAULTS, ProcessTree(proc="/nonexistent"), proc="/nonexistent")
    (a,) = det.process(bare("open", process={"pid": 5, "exec_id": "5:1", "comm": "cat",
                                             "binary": "/bin/cat", "uid": 0,
                                             "args": ["cat", "/etc/shadow"]}))
    assert a["rule"] == "Read sensitive file"
    assert a["output"] == ("Sensitive file /etc/shadow opened for reading by cat /etc/shadow "
                           "(result success, container host)")


def test_init_module_says_why_there_is_no_path() -> None:
    det = Detector(DEFAULTS, ProcessTree(proc="/nonexistent"), proc="/nonexistent")
    e = bare("syscall", "init_module")
    e["syscall"].update(result=-38, error="ENOSYS")
    (a,) = det.process(e)
    assert a["output"] == ("Kernel module load attempted by x -y (module image from memory, "
                           "no file, result ENOSYS, container host)")
    e = bare("syscall", "finit_module")
    e["syscall"].update(path="", path_from_fd=True)
    (a,) = det.process(e)
    assert "(its fd's path not resolved, result success, container host)" in a["output"]


def test_container_without_name_or_image_and_unseen_parent() -> None:
    rs = load_texts([("t.yaml", """
- rule: t
  desc: t
  condition: evt.type = exec
  output: "%proc.cmdline in %container.name (%container.image) from %parent.binary; %net.dport"
""")])
    det = Detector(rs, ProcessTree(proc="/nonexistent"), proc="/nonexistent")
    (a,) = det.process(bare("exec", container={"id": "c0ffee0123456789", "name": None,
                                               "image": None, "runtime": "runc"}))
    assert a["output"] == ("x -y in c0ffee012345 (image unknown) from parent pid 4: binary "
                           "unknown (its exec was not seen); no net.dport")
