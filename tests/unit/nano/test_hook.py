"""The audit hook's decisions and events: called directly with the arguments Python
passes (fast), then for real in a Python process started through the layer's exec
wrapper, where the interpreter raises the audit events itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from moray.nano import layer
from moray.nano.events import MAX_PER_INVOCATION, Reporter
from moray.nano.hook import Hook
from moray.nano.policy import compile_text
from moray.nano.rules import Rules

POLICY = """\
apiVersion: moray/v1
kind: FunctionPolicy
metadata: {{name: fn}}
spec:
  mode: {mode}
  exec: {{allow: [/usr/bin/true]}}
  files:
    writable: ["{tmp}/*"]
    deny: [{{path: "{tmp}/secret", access: read}}]
  network:
    egress:
      allow: ["127.0.0.1/32:{port}", {{host: localhost, ports: {port}}}]
"""


def make(tmp_path: Path, mode: str = "enforce", port: int = 9) -> tuple[Hook, list[dict]]:
    lines: list[dict] = []
    rules = Rules.from_json(compile_text(POLICY.format(mode=mode, tmp=tmp_path, port=port)))
    rid = {"v": "req-1"}
    rep = Reporter(rules.name, sink=lambda b: lines.append(json.loads(b)), rid=lambda: rid["v"])
    hook = Hook(rules, rep)
    hook.rid = rid  # type: ignore[attr-defined]
    return hook, lines


def test_open_for_write_outside_writable_raises_and_reports(tmp_path):
    hook, lines = make(tmp_path)
    hook("open", (str(tmp_path / "ok"), "w", os.O_WRONLY | os.O_CREAT))
    with pytest.raises(PermissionError) as err:
        hook("open", ("/var/task/app.py", "w", os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
    assert "moray nano: file denied by function policy 'fn' (files.writable)" in str(err.value)
    assert err.value.filename == "/var/task/app.py"
    (ev,) = lines
    assert ev["type"] == "enforce" and ev["enforcer"] == "nano"
    assert ev["enforcement"]["action"] == "blocked" and ev["enforcement"]["kind"] == "file"
    assert ev["file"] == {"path": "/var/task/app.py", "access": "write", "operation": "open",
                          "flags": os.O_WRONLY | os.O_CREAT | os.O_TRUNC}
    assert ev["function"]["request_id"] == "req-1" and ev["function"]["phase"] == "invoke"
    assert ev["process"]["pid"] == os.getpid()


def test_reads_only_listed_files_and_paths_resolved(tmp_path):
    hook, lines = make(tmp_path)
    hook("open", ("/etc/hostname", "r", os.O_RDONLY))
    (tmp_path / "secret").write_text("s")
    (tmp_path / "alias").symlink_to(tmp_path / "secret")
    for p in (tmp_path / "secret", tmp_path / "alias", f"{tmp_path}/x/../secret"):
        with pytest.raises(PermissionError):
            hook("open", (str(p), "r", os.O_RDONLY))
    assert {e["file"]["path"] for e in lines} == {str(tmp_path / "secret")}
    # relative to a directory descriptor (os.open(name, dir_fd=fd)): resolved through it
    fd = os.open("/var", os.O_RDONLY)
    try:
        with pytest.raises(PermissionError):
            hook("os.mkdir", ("tmp-x", 0o777, fd))
    finally:
        os.close(fd)
    assert lines[-1]["file"]["path"] == "/var/tmp-x"


def test_no_hard_link_to_a_file_denied_for_reading(tmp_path):
    hook, lines = make(tmp_path)
    with pytest.raises(PermissionError, match="reading this file"):
        hook("os.link", (str(tmp_path / "secret"), str(tmp_path / "copy"), None, None))
    assert lines[0]["file"]["operation"] == "link"


def test_a_link_in_tmp_does_not_open_a_way_out(tmp_path):
    hook, _ = make(tmp_path)
    (tmp_path / "out").symlink_to("/var/task")
    with pytest.raises(PermissionError):
        hook("open", (str(tmp_path / "out" / "app.py"), "a", os.O_WRONLY | os.O_APPEND))
    hook("os.symlink", ("/var/task", str(tmp_path / "l2"), None))  # the link is in tmp


@pytest.mark.parametrize(("event", "args"), [
    ("os.rename", ("{t}/a", "/var/b", None, None)),
    ("os.remove", ("/var/task/x", None)),
    ("os.rmdir", ("/var/task", None)),
    ("os.chmod", ("/var/task/x", 0o777, None)),
    ("os.chown", ("/var/task/x", 0, 0, None)),
    ("os.utime", ("/var/task/x", None, None, None)),
    ("os.truncate", ("/var/task/x", 0)),
    ("os.link", ("{t}/a", "/var/x", None, None)),
    ("os.symlink", ("{t}/a", "/var/x", None)),
])
def test_every_change_outside_writable_is_refused(tmp_path, event, args):
    hook, lines = make(tmp_path)
    with pytest.raises(PermissionError):
        hook(event, tuple(a.format(t=tmp_path) if isinstance(a, str) else a for a in args))
    assert lines[0]["enforcement"]["audit_event"] == event


@pytest.mark.parametrize(("event", "args", "binary"), [
    ("subprocess.Popen", ("ls", ["ls", "-l"], None, None), "/ls"),
    ("subprocess.Popen", (None, ["/bin/sh", "-c", "id"], None, None),
     os.path.realpath("/bin/sh")),
    ("os.exec", ("/usr/bin/env", ["env"], {}), "/usr/bin/env"),
    ("os.posix_spawn", ("/usr/bin/id", ["id"], {}), "/usr/bin/id"),
    ("os.spawn", (os.P_WAIT, "/usr/bin/id", ["id"], None), "/usr/bin/id"),
    ("os.system", ("id",), os.path.realpath("/bin/sh")),
    ("pty.spawn", (["/usr/bin/id"],), "/usr/bin/id"),
])
def test_programs_not_listed_are_refused(tmp_path, event, args, binary):
    hook, lines = make(tmp_path)
    with pytest.raises(PermissionError, match="exec denied"):
        hook(event, args)
    ev = lines[0]
    assert ev["enforcement"]["kind"] == "exec" and binary in ev["exec"]["binary"]
    assert ev["exec"]["filename"] and isinstance(ev["exec"]["args"], list)
    hook("subprocess.Popen", ("/usr/bin/true", ["true"], None, None))  # listed


def test_egress(tmp_path):
    hook, lines = make(tmp_path, port=9)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        hook("socket.connect", (tcp, ("127.0.0.1", 9)))
        hook("socket.connect", (unix, "/run/x.sock"))  # not egress
        with pytest.raises(PermissionError, match="egress denied"):
            hook("socket.connect", (tcp, ("127.0.0.2", 9)))
        with pytest.raises(PermissionError):
            hook("socket.sendto", (udp, ("10.0.0.1", 53)))
        with pytest.raises(PermissionError):
            hook("socket.getaddrinfo", ("evil.example.org", 443, 0, 0, 0))
        hook("socket.getaddrinfo", ("localhost", 9, 0, 0, 0))
        hook("socket.getaddrinfo", ("127.0.0.5", 9, 0, 0, 0))  # literal: judged at connect
    finally:
        tcp.close()
        udp.close()
        unix.close()
    assert [e["network"].get("daddr") or e["network"]["host"] for e in lines] == [
        "127.0.0.2", "10.0.0.1", "evil.example.org"]
    assert lines[1]["network"]["protocol"] == "udp"


def test_resolved_addresses_of_allowed_names_are_allowed(tmp_path):
    hook, _ = make(tmp_path, port=9)
    hook.rules = hook.rules.allowing("127.0.0.1", 1)  # the CIDR entry no longer covers it
    hook.rules = Rules(hook.rules.name, "enforce", (), (), (), (), hook.rules.egress_hosts, ())
    tcp = socket.socket()
    try:
        with pytest.raises(PermissionError):
            hook("socket.connect", (tcp, ("127.0.0.1", 9)))
        hook.remember("localhost", ["127.0.0.1"])
        hook("socket.connect", (tcp, ("127.0.0.1", 9)))
        with pytest.raises(PermissionError):
            hook("socket.connect", (tcp, ("127.0.0.1", 10)))  # the name's ports only
        hook.remember("not-allowed.example", ["127.0.0.9"])
        assert "127.0.0.9" not in hook.resolved
    finally:
        tcp.close()


def test_monitor_mode_reports_would_block_and_lets_it_happen(tmp_path):
    hook, lines = make(tmp_path, mode="monitor")
    hook("open", ("/var/task/x", "w", os.O_WRONLY))
    hook("os.system", ("id",))
    assert [e["enforcement"]["action"] for e in lines] == ["would-block", "would-block"]
    assert hook.would_block == 2 and hook.blocked == 0


def test_repeats_are_folded_per_invocation_and_capped(tmp_path):
    hook, lines = make(tmp_path, mode="monitor")
    for _ in range(5):
        hook("open", ("/var/task/x", "w", os.O_WRONLY))
    assert len(lines) == 1
    hook.rid["v"] = "req-2"  # type: ignore[attr-defined]
    hook("open", ("/var/task/x", "w", os.O_WRONLY))
    assert len(lines) == 2 and lines[1]["function"]["request_id"] == "req-2"
    for i in range(MAX_PER_INVOCATION + 10):
        hook("open", (f"/var/task/f{i}", "w", os.O_WRONLY))
    assert len(lines) == 2 + MAX_PER_INVOCATION - 1
    hook.rid["v"] = "req-3"  # type: ignore[attr-defined]
    hook("open", ("/var/task/y", "w", os.O_WRONLY))
    assert lines[-1]["enforcement"]["suppressed_before"] == 11
    assert hook.would_block == 5 + 1 + MAX_PER_INVOCATION + 10 + 1


def test_other_events_are_ignored(tmp_path):
    hook, lines = make(tmp_path)
    hook("import", ("os", None, [], [], []))
    hook("compile", (b"x", "<string>"))
    assert lines == []


# --- for real: a Python process started through the layer ------------------------------

PROGRAM = r"""
import json, os, socket, subprocess, sys
results = {}
def attempt(name, fn):
    try:
        fn()
        results[name] = "ok"
    except PermissionError as e:
        results[name] = "denied: " + str(e)
tmp = sys.argv[1]
attempt("popen", lambda: subprocess.run(["id"], capture_output=True))
attempt("popen_true", lambda: subprocess.run(["/usr/bin/true"]))
attempt("system", lambda: os.system("id"))
attempt("execv", lambda: os.execv("/usr/bin/id", ["id"]))
attempt("spawn", lambda: os.posix_spawn("/usr/bin/id", ["id"], {}))
attempt("write_tmp", lambda: open(tmp + "/ok", "w").write("x"))
attempt("write_out", lambda: open("/var/tmp/moray-nano-never", "w"))
attempt("os_open", lambda: os.open("/var/tmp/moray-nano-never2", os.O_CREAT | os.O_WRONLY))
attempt("read_secret", lambda: open(tmp + "/secret").read())
attempt("read_other", lambda: open("/etc/hostname").read())
attempt("rename_out", lambda: os.rename(tmp + "/ok", "/var/tmp/moray-nano-never3"))
attempt("connect", lambda: socket.create_connection(("127.0.0.2", 9), timeout=1))
attempt("resolve", lambda: socket.getaddrinfo("evil.example.org", 443))
import _posixsubprocess
r, w = os.pipe()
attempt("fork_exec", lambda: _posixsubprocess.fork_exec(
    [b"/usr/bin/id"], [b"/nonexistent/id", b"/usr/bin/id"], True, (w,), None, None,
    -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False))
del sys.modules["_posixsubprocess"]
attempt("reimport", lambda: __import__("_posixsubprocess"))
print("RESULTS " + json.dumps(results), flush=True)
"""


def run_layer(tmp_path: Path, mode: str = "enforce", policy: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "secret").write_text("s")
    compiled = compile_text(POLICY.format(mode=mode, tmp=tmp_path, port=9))
    zp = tmp_path / "layer.zip"
    layer.build(zp, compiled)
    opt = tmp_path / "opt"
    layer.unpack(zp, opt)
    if policy is not None:
        (opt / layer.LIB / "policy.json").write_text(policy)
    (tmp_path / "prog.py").write_text(PROGRAM)
    return subprocess.run([str(opt / layer.WRAPPER), sys.executable, str(tmp_path / "prog.py"),
                           str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], **(env or {})})


def parse(out: str) -> tuple[dict[str, str], list[dict]]:
    results, events = {}, []
    for line in out.splitlines():
        if line.startswith("RESULTS "):
            results = json.loads(line[8:])
        elif line.startswith("{"):
            events.append(json.loads(line))
    return results, events


def test_through_the_layer_enforce(tmp_path):
    p = run_layer(tmp_path)
    results, events = parse(p.stdout)
    assert p.returncode == 0, p.stderr
    denied = {k for k, v in results.items() if v.startswith("denied: ")}
    assert denied == {"popen", "system", "execv", "spawn", "write_out", "os_open",
                      "read_secret", "rename_out", "connect", "resolve", "fork_exec",
                      "reimport"}, results
    assert results["popen_true"] == results["write_tmp"] == results["read_other"] == "ok"
    assert not os.path.exists("/var/tmp/moray-nano-never")
    assert not os.path.exists("/var/tmp/moray-nano-never2")
    # one event per target and rule (the same program refused through Popen, execv,
    # posix_spawn and fork_exec is one line)
    targets = sorted((e["enforcement"]["audit_event"], e["enforcement"]["kind"]) for e in events)
    assert targets == sorted([
        ("subprocess.Popen", "exec"), ("os.system", "exec"), ("open", "file"),
        ("open", "file"), ("open", "file"), ("os.rename", "file"),
        ("socket.connect", "egress"), ("socket.getaddrinfo", "egress"), ("import", "exec")])
    assert all(e["enforcer"] == "nano" and e["function"]["phase"] == "init" for e in events)


def test_through_the_layer_monitor(tmp_path):
    p = run_layer(tmp_path, env={"MORAY_NANO_MODE": "monitor"})
    results, events = parse(p.stdout)
    # execv replaced the process with id: everything before it ran, nothing was refused
    assert results == {} and "uid=" in p.stdout, p.stdout
    assert {e["enforcement"]["action"] for e in events} == {"would-block"}


def test_a_broken_policy_stops_the_function(tmp_path):
    p = run_layer(tmp_path, policy='{"format": 99}')
    assert p.returncode == 1
    assert "RESULTS" not in p.stdout
    assert "moray nano: function stopped" in p.stderr and "format 99" in p.stderr
    stopped = json.loads(p.stdout.splitlines()[0])
    assert stopped["enforcement"]["action"] == "stopped"


CTYPES = r"""
import json
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except PermissionError as e:
        out[name] = "denied"
attempt("import", lambda: __import__("ctypes"))
attempt("import_private", lambda: __import__("_ctypes"))
if out["import"] == "ok":
    import ctypes
    attempt("load", lambda: ctypes.CDLL("libc.so.6"))
    attempt("call", lambda: ctypes.CDLL(None).getpid())
    buf = ctypes.create_string_buffer(8)
    attempt("memmove", lambda: ctypes.memmove(buf, b"abcdefgh", 8))
    attempt("from_address", lambda: ctypes.c_char.from_address(ctypes.addressof(buf)))
print("RESULTS " + json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("setting", ["deny", "allow"])
def test_code_ctypes(tmp_path, setting):
    text = ("apiVersion: moray/v1\nkind: FunctionPolicy\nmetadata: {name: c}\n"
            f"spec: {{code: {{ctypes: {setting}}}}}\n")
    zp = tmp_path / "layer.zip"
    layer.build(zp, compile_text(text))
    layer.unpack(zp, tmp_path / "opt")
    (tmp_path / "prog.py").write_text(CTYPES)
    p = subprocess.run([str(tmp_path / "opt" / layer.WRAPPER), sys.executable,
                        str(tmp_path / "prog.py")], capture_output=True, text=True, timeout=60,
                       env={"PATH": os.environ["PATH"]})
    results, events = parse(p.stdout)
    assert p.returncode == 0, p.stderr
    if setting == "deny":
        assert results == {"import": "denied", "import_private": "denied"}
        assert {e["enforcement"]["rule"] for e in events} == {"code.ctypes"}
        assert events[0]["code"] == {"via": "ctypes", "what": "import ctypes"}
    else:
        assert set(results.values()) == {"ok"} and len(results) == 6 and events == []


def test_objects_that_could_lie_about_their_path_are_refused(tmp_path):
    hook, lines = make(tmp_path)

    class Flip(os.PathLike):  # answers the system call one path and a checker another
        calls = 0

        def __fspath__(self):
            Flip.calls += 1
            return "/var/task/app.py" if Flip.calls % 2 else str(tmp_path / "ok")

    with pytest.raises(PermissionError, match="cannot be checked"):
        hook("open", (Flip(), "w", os.O_WRONLY))
    assert Flip.calls == 0  # the hook never ran the caller's code
    assert lines[0]["enforcement"]["rule"] == "untrusted-object"

    class Liar(str):
        def __str__(self):
            return str(tmp_path / "ok")

    with pytest.raises(PermissionError):  # judged on its characters, not its __str__
        hook("open", (Liar("/var/task/app.py"), "w", os.O_WRONLY))
    hook("open", (tmp_path / "ok", "w", os.O_WRONLY))  # pathlib's own paths are fine

    class Argv(list):
        def __iter__(self):
            return iter(["/usr/bin/true"])

    with pytest.raises(PermissionError, match="exec denied"):
        hook("subprocess.Popen", (None, Argv(["/usr/bin/id"]), None, None))

    class Sock(socket.socket):
        @property
        def family(self):
            return socket.AF_UNIX  # "not egress"

    s = Sock(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(PermissionError, match="egress denied"):
            hook("socket.connect", (s, ("127.0.0.2", 9)))
    finally:
        s.close()


def test_names_given_to_connect_are_judged_by_their_addresses_against_deny(tmp_path):
    rules = Rules.from_json(compile_text(
        "apiVersion: moray/v1\nkind: FunctionPolicy\nmetadata: {name: d}\n"
        "spec: {network: {egress: {deny: [127.0.0.0/8]}}}\n"))
    lines: list[dict] = []
    hook = Hook(rules, Reporter("d", sink=lambda b: lines.append(json.loads(b))))
    s = socket.socket()
    try:
        with pytest.raises(PermissionError):
            hook("socket.connect", (s, ("localhost", 9)))  # /etc/hosts: no DNS query
        with pytest.raises(PermissionError):
            hook("socket.connect", (s, ("::ffff:127.0.0.1", 9)))
    finally:
        s.close()
    with pytest.raises(PermissionError, match="raw sockets"):
        hook("socket.__new__", (None, socket.AF_INET, socket.SOCK_RAW, 0))
    hook("socket.__new__", (None, socket.AF_INET, socket.SOCK_STREAM, 0))


def test_request_id_is_read_from_the_runtime_at_each_event(monkeypatch):
    import types

    from moray.nano.events import request_id

    fake = types.ModuleType("awslambdaric.bootstrap")
    monkeypatch.setitem(sys.modules, "awslambdaric.bootstrap", fake)
    monkeypatch.delenv("_X_AMZN_REQUEST_ID", raising=False)
    fake._GLOBAL_AWS_REQUEST_ID = None  # type: ignore[attr-defined]
    assert request_id() is None  # init phase
    fake._GLOBAL_AWS_REQUEST_ID = "8f1c"  # type: ignore[attr-defined]
    assert request_id() == "8f1c"


DRIFT = r"""
import json, sys
out = {}
tmp = sys.argv[1]
open(tmp + "/dropped.py", "w").write("X = 1\n")
sys.path.insert(0, tmp)
try:
    import dropped
    out["import"] = "ok"
except PermissionError:
    out["import"] = "denied"
try:
    exec(compile(open(tmp + "/dropped.py").read(), tmp + "/dropped.py", "exec"))
    out["exec"] = "ok"
except PermissionError:
    out["exec"] = "denied"
import json as again  # code from the image still runs
print("RESULTS " + json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("setting", ["block", "allow"])
def test_code_drift(tmp_path, setting):
    text = ("apiVersion: moray/v1\nkind: FunctionPolicy\nmetadata: {name: c}\n"
            f"spec: {{files: {{writable: ['{tmp_path}/w/*']}}, code: {{drift: {setting}}}}}\n")
    zp = tmp_path / "layer.zip"
    layer.build(zp, compile_text(text))
    layer.unpack(zp, tmp_path / "opt")
    (tmp_path / "prog.py").write_text(DRIFT)
    work = tmp_path / "w"
    work.mkdir()
    p = subprocess.run([str(tmp_path / "opt" / layer.WRAPPER), sys.executable,
                        str(tmp_path / "prog.py"), str(work)], capture_output=True, text=True,
                       timeout=60, env={"PATH": os.environ["PATH"]})
    results, events = parse(p.stdout)
    assert p.returncode == 0, p.stderr
    want = "denied" if setting == "block" else "ok"
    assert results == {"import": want, "exec": want}
    if setting == "block":
        assert {e["enforcement"]["rule"] for e in events} == {"code.drift"}
        assert events[0]["code"]["what"] == str(work / "dropped.py")


def test_an_event_with_unreadable_arguments_is_refused(tmp_path):
    hook, lines = make(tmp_path)
    with pytest.raises(PermissionError, match="could not be read"):
        hook("open", ())  # a hand-made sys.audit("open")
    with pytest.raises(PermissionError):
        hook("subprocess.Popen", (None,))
    assert hook.unreadable == 2
    assert [e["enforcement"]["rule"] for e in lines] == ["unreadable-event"] * 2
