"""Pipeline: an exec enforcement event names the new image, not the one it replaced."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from moray.agent.bpf import abi
from moray.agent.enrich.proctree import ProcessTree
from moray.agent.events.reader import BatchQueue
from moray.agent.events.types import Decision, EnforceEvent, ExecEvent, Proc
from moray.agent.output.jsonl import EventSink
from moray.agent.output.metrics import Stats
from moray.agent.output.schema import Formatter
from moray.agent.pipeline import Pipeline

PROC = Proc(pid=40, tid=40, ppid=1, uid=0, euid=0, gid=0, mntns=1, cgroup_id=0,
            start_ns=5_000_000_000, pstart_ns=1_000_000_000, comm="sh")


class NullSink:
    def write(self, event: dict[str, object]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def _pipeline(tmp_path: Path) -> Pipeline:
    sink: EventSink = NullSink()  # type: ignore[assignment]
    p = Pipeline(ProcessTree(str(tmp_path), read_proc=lambda _proc, _pid: None), sink,
                 Formatter("n"), None, Stats())
    p.enrich(ExecEvent(ts=1, proc=PROC, binary="/bin/sh", filename="/bin/sh",
                       args=("sh", "-c", "x"), cwd="/", argc=3, args_truncated=False,
                       binary_truncated=False))
    return p


def _enforce(action: int, kind: int = abi.EKind.EXEC) -> EnforceEvent:
    return EnforceEvent(ts=2, proc=PROC, kind=kind, action=action, policies=1, enforced=1,
                        arg=0, family=0, daddr=None, dport=0, path="/usr/bin/nc.real",
                        path2="/usr/bin/nc")


@pytest.mark.parametrize("action", [abi.EAction.KILLED, abi.EAction.WOULD_BLOCK,
                                    abi.EAction.HELD])
def test_exec_enforcement_names_new_image(tmp_path: Path, action: int) -> None:
    p = _pipeline(tmp_path)
    out = p.enrich(_enforce(action))
    assert out["process"]["binary"] == "/usr/bin/nc.real"
    assert out["process"]["filename"] == "/usr/bin/nc"
    assert out["process"]["args"] == []
    # the tree itself is updated only by the exec record
    again = p.enrich(_enforce(abi.EAction.KILLED, abi.EKind.FILE))
    assert again["process"]["binary"] == "/bin/sh" and again["process"]["args"][0] == "sh"


def test_blocked_exec_keeps_old_image(tmp_path: Path) -> None:
    """LSM tier: the exec failed, the caller goes on as itself."""
    out = _pipeline(tmp_path).enrich(_enforce(abi.EAction.BLOCKED))
    assert out["process"]["binary"] == "/bin/sh"


def test_a_failing_record_is_counted_and_the_pipeline_goes_on(tmp_path: Path) -> None:
    """A bug on one record (here: the detect stage raising) must not stop the pipeline
    thread, which would silently stop all output."""
    written: list[dict[str, object]] = []

    class ListSink(NullSink):
        def write(self, event: dict[str, object]) -> None:
            written.append(event)

    rec = (Path(__file__).parents[1] / "fixtures" / "records" / "fork.bin").read_bytes()
    p = Pipeline(ProcessTree(str(tmp_path), read_proc=lambda _proc, _pid: None),
                 ListSink(), Formatter("n"), None, Stats())  # type: ignore[arg-type]
    calls = []

    def detect(e: dict[str, object], proc: object = None,
               parent: object = None) -> list[dict[str, object]]:
        calls.append(e)
        if len(calls) == 1:
            raise RuntimeError("a rule-engine bug")
        return []
    p.detect = detect
    q = BatchQueue(16)
    q.put([rec, rec])
    q.close()
    p.run(q, threading.Event())
    assert len(calls) == 2 and len(written) == 2 and p.stats.enrich_errors == 1


def test_decisions_enter_typed_and_are_explained(tmp_path: Path) -> None:
    """A held exec's decision (agent/policy/hold.py) is queued typed, behind the kernel
    records already read, and explained by the format stage; it names the paths of the
    kernel's HELD record of that exec (the filename passed to execve: /usr/bin/nc),
    not the ones /proc showed at the decision."""
    from moray.api.policy.load import load_text

    from .policy.test_policy import WEB

    written: list[dict[str, object]] = []

    class ListSink(NullSink):
        def write(self, event: dict[str, object]) -> None:
            written.append(event)

    web = load_text(WEB, "web.yaml")[0]
    table = SimpleNamespace(policies_at=lambda _ts: {0: web})
    rec = (Path(__file__).parents[1] / "fixtures" / "records" / "fork.bin").read_bytes()
    p = Pipeline(ProcessTree(str(tmp_path), read_proc=lambda _proc, _pid: None),
                 ListSink(), Formatter("n"), None, Stats())  # type: ignore[arg-type]
    p.format.explain_with(table, {"exec": "lsm"})
    from_proc = _enforce(abi.EAction.KILLED)._replace(path="/usr/bin/busybox", path2="")
    q = BatchQueue(16)
    q.put([rec])
    q.put((Decision(from_proc),))   # its HELD record seen (noted below): the kernel's paths
    q.put((Decision(from_proc),))   # none seen: /proc's
    q.close()
    p.format.held.note(_enforce(abi.EAction.HELD))
    p.run(q, threading.Event())
    assert [e["type"] for e in written] == ["fork", "enforce", "enforce"]
    first, second = (e["enforcement"] for e in written[1:])
    assert isinstance(first, dict) and isinstance(second, dict)
    assert (first["action"], first["policy"], first["rule"], first["tier"]) == (
        "killed", "web-lockdown", "exec.deny: /usr/bin/*", "lsm")
    assert (first["binary"], first["filename"]) == ("/usr/bin/nc.real", "/usr/bin/nc")
    assert second["binary"] == "/usr/bin/busybox" and "filename" not in second
    assert p.stats.enrich_errors == 0
