"""The NanoEnforcer under the real Lambda runtime interface emulator (aws-lambda-rie)
and the real Python runtime interface client (awslambdaric): a function deployed with
the layer built by ``moray nano layer``, started through its exec wrapper exactly as
AWS_LAMBDA_EXEC_WRAPPER starts it, invoked over HTTP on 127.0.0.1. Denied subprocess,
egress and writes raise a clear PermissionError inside the function and produce an event
with the invocation's request id on the log stream; allowed work passes."""

from __future__ import annotations

import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.lambda_rie import Emulator, emulator, find_rie, ric_path

pytestmark = pytest.mark.integration

HANDLER = r'''
import os, socket, subprocess

def handler(event, context):
    do, arg = event["do"], event.get("arg")
    out = {"rid": context.aws_request_id}
    try:
        if do == "exec":
            out["rc"] = subprocess.run(arg).returncode
        elif do == "system":
            out["rc"] = os.system(arg)
        elif do == "write":
            with open(arg, "w") as f:
                f.write("written by the function")
            out["read_back"] = open(arg).read()
        elif do == "read":
            out["data"] = open(arg).read()
        elif do == "connect":
            host, port = arg
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(b"ping")
                out["echo"] = s.recv(4).decode()
        elif do == "uncaught":
            subprocess.run(["/usr/bin/id"])
        out["ok"] = True
    except PermissionError as e:
        if do == "uncaught":
            raise
        out["ok"], out["error"] = False, str(e)
    return out
'''

POLICY = """\
apiVersion: moray/v1
kind: FunctionPolicy
metadata: {{name: orders-fn}}
spec:
  mode: enforce
  exec: {{allow: [/usr/bin/true]}}
  files:
    writable: ["{tmp}/*"]
    deny: [{{path: "{task}/secret.txt", access: read}}]
  network:
    egress:
      allow: ["127.0.0.1/32:{port}", {{host: localhost, ports: {port}}}]
"""


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(self.request.recv(4))


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def fn(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[tuple[Emulator, Path]]:
    if find_rie() is None or ric_path() is None:
        pytest.skip("aws-lambda-rie or awslambdaric missing (make install)")
    base = tmp_path_factory.mktemp("nano")
    task, tmp = base / "task", base / "tmp"
    task.mkdir()
    tmp.mkdir()
    (task / "fn.py").write_text(HANDLER)
    (task / "secret.txt").write_text("s3cr3t")
    (base / "policy.yaml").write_text(POLICY.format(tmp=tmp, task=task, port=echo))
    # the layer, built by the CLI and unpacked as Lambda unpacks it under /opt
    subprocess.run([sys.executable, "-m", "moray.cli", "nano", "layer",
                    str(base / "layer.zip"), "--policy", str(base / "policy.yaml")],
                   check=True, capture_output=True, env={**os.environ})
    from moray.nano import layer
    layer.unpack(base / "layer.zip", base / "opt")
    with emulator(task, "fn.handler", base / "rie.log",
                  wrapper=[str(base / "opt" / layer.WRAPPER)]) as e:
        yield e, tmp


def _denied(e: Emulator, event: dict, kind: str) -> dict:
    out = e.invoke(event)
    assert out["ok"] is False, out
    assert out["error"].startswith(f"[Errno 13] moray nano: {kind} denied by function "
                                   f"policy 'orders-fn'"), out
    (ev,) = e.wait_events(out["rid"])
    assert ev["type"] == "enforce" and ev["enforcer"] == "nano"
    assert ev["enforcement"]["action"] == "blocked" and ev["enforcement"]["kind"] == kind
    assert ev["enforcement"]["policy"] == "orders-fn"
    assert ev["function"]["name"] == "nano-test" and ev["function"]["phase"] == "invoke"
    return ev


def test_subprocess_is_refused(fn):
    e, _ = fn
    ev = _denied(e, {"do": "exec", "arg": ["/usr/bin/id"]}, "exec")
    assert ev["exec"]["binary"] == "/usr/bin/id" and ev["exec"]["args"] == ["/usr/bin/id"]
    ev = _denied(e, {"do": "system", "arg": "id"}, "exec")
    assert ev["enforcement"]["audit_event"] == "os.system"


def test_write_outside_writable_is_refused(fn):
    e, _ = fn
    target = "/var/tmp/moray-nano-lambda-never"
    ev = _denied(e, {"do": "write", "arg": target}, "file")
    assert ev["file"]["path"] == target and ev["file"]["access"] == "write"
    assert not os.path.exists(target)


def test_listed_file_read_is_refused(fn):
    e, _ = fn
    ev = _denied(e, {"do": "read", "arg": "secret.txt"}, "file")
    assert ev["file"]["path"].endswith("/task/secret.txt") and ev["file"]["access"] == "read"


def test_egress_not_allowed_is_refused(fn, echo):
    e, _ = fn
    ev = _denied(e, {"do": "connect", "arg": ["127.0.0.2", echo]}, "egress")
    assert ev["network"]["daddr"] == "127.0.0.2" and ev["network"]["dport"] == echo
    _denied(e, {"do": "connect", "arg": ["127.0.0.1", echo + 1 if echo < 65535 else 1]},
            "egress")  # the allowed address on another port
    # a name not allowed is refused before it is looked up
    ev = _denied(e, {"do": "connect", "arg": ["evil.example.org", 443]}, "egress")
    assert ev["network"]["host"] == "evil.example.org"
    assert ev["enforcement"]["audit_event"] == "socket.getaddrinfo"


def test_allowed_work_passes(fn, echo):
    e, tmp = fn
    ok = e.invoke({"do": "exec", "arg": ["/usr/bin/true"]})
    assert ok["ok"] and ok["rc"] == 0, ok
    ok = e.invoke({"do": "write", "arg": str(tmp / "out.txt")})
    assert ok["ok"] and ok["read_back"] == "written by the function", ok
    ok = e.invoke({"do": "connect", "arg": ["127.0.0.1", echo]})
    assert ok["ok"] and ok["echo"] == "ping", ok
    ok = e.invoke({"do": "connect", "arg": ["localhost", echo]})  # by name, resolved
    assert ok["ok"] and ok["echo"] == "ping", ok
    ok = e.invoke({"do": "read", "arg": "fn.py"})
    assert ok["ok"], ok
    assert [x for x in e.lines() if (x.get("function") or {}).get("request_id") == ok["rid"]
            ] == []  # allowed work: no event (the log is written before the answer)


def test_an_uncaught_refusal_is_the_invocation_error(fn):
    e, _ = fn
    err = e.invoke({"do": "uncaught"})
    assert err["errorType"] == "PermissionError"
    assert "moray nano: exec denied by function policy 'orders-fn'" in err["errorMessage"]
    assert e.invoke({"do": "exec", "arg": ["/usr/bin/true"]})["ok"]


def test_monitor_mode_reports_and_lets_it_run(tmp_path, fn):
    """The same layer with MORAY_NANO_MODE=monitor in the function's environment: the
    program runs, the event says would-block with the request id."""
    e, _ = fn
    task = tmp_path / "task"
    task.mkdir()
    (task / "fn.py").write_text(HANDLER)
    with emulator(task, "fn.handler", tmp_path / "rie.log", wrapper=e.wrapper,
                  env={"MORAY_NANO_MODE": "monitor"}) as m:
        out = m.invoke({"do": "exec", "arg": ["/usr/bin/id"]})
        assert out["ok"] and out["rc"] == 0, out
        (ev,) = m.wait_events(out["rid"])
        assert ev["enforcement"]["action"] == "would-block"
        assert ev["exec"]["binary"] == "/usr/bin/id"
