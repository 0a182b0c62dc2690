"""`moray kube-enforcer` as kube-apiserver calls it: real HTTPS AdmissionReview v1 requests
(tests/helpers/kube.py: the object shapes of Pod, Deployment, ReplicaSet, StatefulSet,
DaemonSet, Job, CronJob) against webhook processes, a real moray-server (SQLite; the
inventory also on PostgreSQL), images built and pushed to Debian's docker-registry on
127.0.0.1 and scanned by the server against real advisories.

No kube-apiserver runs here: these requests are what it would send. Covered: compliant and
non-compliant images in every kind, init and ephemeral containers, tags, digests and a
multi-platform index, unregistered images under deny / allow / scan-on-admission, monitor
mode, an unreachable server under fail-closed and fail-open, malformed requests (400/413,
the webhook keeps serving), the audit entry of each decision (an unregistered image
allowed under `unregistered: allow` included), the workload inventory and
"which workloads run an image with CVE-X" (REST and CLI), a verdict that changes taking
effect without a restart.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import rootfs
from tests.fixtures.images.builder import Image
from tests.fixtures.images.registry import push_image, push_index
from tests.helpers.controlplane import ROOT, Api, ServerProcess, free_port, wait_for
from tests.helpers.kube import KINDS, Webhook, pod_spec, review, workload
from tests.integration.test_scan_registry import ADVISORIES, REGISTRY_BIN, registry

__all__ = ["registry"]  # the module-scoped docker-registry fixture, shared

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REGISTRY_BIN is None, reason="Debian package docker-registry missing"),
    pytest.mark.skipif(not ADVISORIES.is_dir(), reason="no advisories (MORAY_ADVISORIES)"),
]

# every finding fails it: the image with requests 2.19.0 has CVE-2018-18074
POLICY = ("apiVersion: moray/v1\nkind: ImageAssurancePolicy\nmetadata: {name: strict}\n"
          "spec: {failOn: unknown}\n")
CVE = "CVE-2018-18074"
NS = "shop"


@dataclass
class Env:
    registry: str
    server: ServerProcess
    admin: Api
    operator: str
    images: dict[str, str]      # name -> manifest digest
    hooks: dict[str, Webhook]

    def ref(self, name: str, tag: str = "1.0") -> str:
        return f"{self.registry}/kube/{name}:{tag}"

    def pinned(self, name: str) -> str:
        return f"{self.registry}/kube/{name}@{self.images[name]}"


def _image(*packages: tuple[str, str]) -> Image:
    return Image([rootfs.dist_info(n, v) for n, v in packages], config={"User": "1000:1000"})


def _moray(server: ServerProcess, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MORAY_SERVER": server.url,
           "MORAY_TOKEN": server.admin_token, "MORAY_DATA_DIR": str(tmp)}
    return subprocess.run([sys.executable, "-m", "moray.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def env(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("kube")
    base = f"http://{registry}"
    good = _image(("six", "1.16.0"))
    images = {"good": push_image(base, "kube/good", "1.0", good),
              "bad": push_image(base, "kube/bad", "1.0", _image(("requests", "2.19.0"))),
              "fresh": push_image(base, "kube/fresh", "1.0", _image(("idna", "3.4"))),
              "unscanned": push_image(base, "kube/unscanned", "1.0",
                                      _image(("attrs", "23.1.0"))),
              "multi": push_index(base, "kube/multi", "1.0", {
                  ("linux", "arm64"): _image(("six", "1.15.0")), ("linux", "amd64"): good})}
    server = ServerProcess(tmp / "server", extra_args=(
        "--scan-poll-seconds", "0.3", "--scan-workers", "1")).start()
    hooks: dict[str, Webhook] = {}
    try:
        admin = server.api()
        server.import_advisories(ADVISORIES)
        operator = admin("POST", "/api/v1/tokens", expect=201,
                         json={"name": "kube-enforcer", "role": "admission"})["token"]
        for name in ("good", "bad"):
            admin("POST", "/api/v1/scan-jobs", expect=200, json={
                "image": f"{registry}/kube/{name}:1.0", "policy": POLICY, "insecure": True})
        common = {"cluster": "test", "registries": {registry: {"insecure": True}},
                  "verdictTTL": 1, "unregisteredTTL": 0.5}
        down = f"http://127.0.0.1:{free_port()}"    # nothing listens there
        for name, settings, url in (
                ("enforce", {}, None),
                ("allow", {"unregistered": "allow"}, None),
                ("scan", {"unregistered": "scan", "scan": {"policy": POLICY, "budget": 25},
                          "requestTimeout": 28}, None),
                ("monitor", {"mode": "monitor"}, None),
                ("closed", {}, down),
                ("open", {"failurePolicy": "open"}, down)):
            hooks[name] = Webhook(tmp, server, operator, name, {**common, **settings},
                                  server_url=url).spawn()
        hooks["mtls"] = Webhook(tmp, server, operator, "mtls", common, extra_args=(
            "--client-ca", str(server.data_dir / "pki" / "ca.pem"))).spawn()
        for hook in hooks.values():
            hook.wait_ready()
        for name in ("good", "bad"):
            wait_for(lambda d=images[name]: admin("GET", f"/api/v1/images/{d}/verdicts",
                                                  expect=200),
                     timeout=90, interval=0.2, what=f"verdict of {name}")
        yield Env(registry, server, admin, operator, images, hooks)
    finally:
        for hook in hooks.values():
            hook.close()
        server.stop()


def _denied(answer: dict[str, Any]) -> str:
    assert answer["allowed"] is False, answer
    assert answer["status"]["code"] == 403
    return str(answer["status"]["message"])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_compliant_allowed_non_compliant_denied(env: Env, kind: str) -> None:
    hook = env.hooks["enforce"]
    ok = hook.validate(review(workload(kind, f"ok-{kind.lower()}", NS, [env.ref("good")])))
    assert ok["allowed"] is True and "warnings" not in ok, ok
    bad = workload(kind, f"bad-{kind.lower()}", NS, [env.ref("good"), env.ref("bad")])
    message = _denied(hook.validate(review(bad)))
    # the image, its digest, the container and the failed controls
    assert f"image {env.ref('bad')} ({env.images['bad']}) of container 'c1'" in message
    assert "fails image assurance: strict:" in message and CVE in message
    assert env.ref("good") not in message


def test_init_and_ephemeral_containers(env: Env) -> None:
    hook = env.hooks["enforce"]
    pod = workload("Pod", "with-init", NS, [env.ref("good")], init=[env.ref("bad")])
    message = _denied(hook.validate(review(pod)))
    assert "of init container 'init0' fails image assurance" in message
    job = workload("Job", "migrate", NS, [env.ref("good")], init=[env.ref("bad")])
    assert "init container 'init0'" in _denied(hook.validate(review(job)))

    # kubectl debug: an UPDATE of pods/ephemeralcontainers adding a debugging container
    running = workload("Pod", "web-1", NS, [env.ref("good")])
    debugged = copy.deepcopy(running)
    debugged["spec"] = pod_spec([env.ref("good")], ephemeral=[env.ref("bad")])
    message = _denied(hook.validate(review(debugged, operation="UPDATE", old=running,
                                           sub_resource="ephemeralcontainers")))
    assert "of ephemeral container 'debugger-0' fails image assurance" in message
    debugged["spec"] = pod_spec([env.ref("good")], ephemeral=[env.ref("good")])
    assert hook.validate(review(debugged, operation="UPDATE", old=running,
                                sub_resource="ephemeralcontainers"))["allowed"] is True

    # an UPDATE that leaves a container as it was (scaling, a label) is not judged again
    old = workload("Deployment", "legacy", NS, [env.ref("bad")])
    new = copy.deepcopy(old)
    new["spec"]["replicas"] = 5
    assert hook.validate(review(new, operation="UPDATE", old=old))["allowed"] is True
    new["spec"]["template"]["spec"]["containers"][0]["image"] = env.pinned("bad")
    assert CVE in _denied(hook.validate(review(new, operation="UPDATE", old=old)))


def test_tags_digests_and_an_index(env: Env) -> None:
    hook = env.hooks["enforce"]
    by_digest = workload("Pod", "pinned", NS, [env.pinned("good")])
    assert hook.validate(review(by_digest))["allowed"] is True
    message = _denied(hook.validate(review(workload("Pod", "pinned-bad", NS,
                                                    [env.pinned("bad")]))))
    assert f"image {env.pinned('bad')} ({env.images['bad']})" in message
    # a multi-platform index: judged by the linux/amd64 manifest in it (the good image)
    index = f"{env.registry}/kube/multi@{env.images['multi']}"
    assert hook.validate(review(workload("Pod", "multi", NS, [index])))["allowed"] is True
    tagged = workload("Pod", "multi-tag", NS, [env.ref("multi")])
    assert hook.validate(review(tagged))["allowed"] is True
    # a tag the registry does not have: unresolved, denied (fail closed)
    missing = _denied(hook.validate(review(workload("Pod", "typo", NS,
                                                    [env.ref("good", "9.9")]))))
    assert "cannot be resolved to a digest" in missing and "failurePolicy: closed" in missing


def test_unregistered_images_under_each_setting(env: Env) -> None:
    pod = workload("Pod", "new-app", NS, [env.ref("unscanned")])
    message = _denied(env.hooks["enforce"].validate(review(pod)))
    assert f"image {env.ref('unscanned')} ({env.images['unscanned']})" in message
    assert "has no assurance verdict" in message
    assert f"moray scan image add {env.pinned('unscanned')}" in message

    body = review(pod)
    allowed = env.hooks["allow"].validate(body)
    assert allowed["allowed"] is True
    assert any(w.startswith(f"allowed (unregistered: allow): image {env.ref('unscanned')}")
               for w in allowed["warnings"]), allowed
    # ... with an audit event naming the unregistered image
    row = wait_for(lambda: _audit_entry(env, body["request"]["uid"]), timeout=30,
                   interval=0.1, what="the audit entry of the allowed unregistered image")
    assert row["action"] == "admission.allow" and row["target"] == f"test/{NS}/Pod/new-app"
    (image,) = row["detail"]["images"]
    assert (image["digest"], image["verdict"]) == (env.images["unscanned"], "unregistered")

    # scan on admission: the server scans the exact digest while the request waits
    fresh = workload("Deployment", "fresh", NS, [env.ref("fresh")])
    scanned = env.hooks["scan"].validate(review(fresh))
    assert scanned["allowed"] is True and "warnings" not in scanned, scanned
    (verdict,) = env.admin("GET", f"/api/v1/images/{env.images['fresh']}/verdicts", expect=200)
    assert verdict["policy"] == "strict" and verdict["passed"] is True
    assert verdict["image"] == env.pinned("fresh")
    # ... and a non-compliant image scanned on admission is denied
    dirty = push_image(f"http://{env.registry}", "kube/dirty", "1.0",
                       _image(("requests", "2.19.0"), ("attrs", "22.2.0")))
    message = _denied(env.hooks["scan"].validate(review(workload(
        "Pod", "dirty", NS, [f"{env.registry}/kube/dirty:1.0"]))))
    assert f"({dirty})" in message and CVE in message


def test_monitor_mode_warns_and_the_inventory_answers_which_workloads_have_a_cve(
        env: Env, tmp_path: Path) -> None:
    hook = env.hooks["monitor"]
    dep = workload("Deployment", "checkout", NS, [env.ref("good"), env.ref("bad")],
                   init=[env.ref("good")])
    answer = hook.validate(review(dep))
    assert answer["allowed"] is True and "status" not in answer
    (warning,) = answer["warnings"]
    assert warning.startswith(f"would be denied: image {env.ref('bad')}") and CVE in warning
    assert len(warning) <= 256
    clean = workload("StatefulSet", "db", NS, [env.ref("good")])
    calm = hook.validate(review(clean))
    assert calm["allowed"] is True and "warnings" not in calm

    def listed() -> list[dict[str, Any]] | None:
        rows = env.admin("GET", "/api/v1/workloads", expect=200,
                         params={"vulnerability": CVE, "namespace": NS})
        return rows if any(r["name"] == "checkout" for r in rows) else None

    rows = wait_for(listed, timeout=30, interval=0.1, what="the inventory")
    (w,) = [r for r in rows if r["name"] == "checkout"]
    assert (w["cluster"], w["kind"], w["decision"], w["allowed"]) == (
        "test", "Deployment", "warn", True)
    images = {(i["container_type"], i["container"]): i for i in w["images"]}
    bad = images[("container", "c1")]
    assert bad["digest"] == env.images["bad"] and bad["verdict"] == "non-compliant"
    assert {m["id"] for m in bad["matched"]} == {CVE} and bad["matched"][0][
        "package"] == "requests"
    assert images[("init", "init0")]["verdict"] == "compliant"
    assert images[("init", "init0")]["matched"] == []
    assert not any(r["name"] == "db" for r in rows)   # runs no image with the CVE
    # the same through the CLI
    out = _moray(env.server, tmp_path, "workloads", "--vulnerability", CVE)
    assert out.returncode == 0, out.stderr
    assert f"{NS}/Deployment/checkout  warn" in out.stdout and f"{CVE} in requests" in out.stdout

    # denied workloads never ran: listed only when asked for
    env.hooks["enforce"].validate(review(workload("DaemonSet", "agent-x", NS,
                                                  [env.ref("bad")])))
    wait_for(lambda: any(r["name"] == "agent-x" for r in env.admin(
        "GET", "/api/v1/workloads", expect=200, params={
            "vulnerability": CVE, "include_denied": True})), timeout=30, what="denied listed")
    assert not any(r["name"] == "agent-x" for r in env.admin(
        "GET", "/api/v1/workloads", expect=200, params={"vulnerability": CVE}))
    # a DELETE review takes it out of the inventory
    hook.validate(review(None, operation="DELETE", old=dep))
    wait_for(lambda: not listed(), timeout=30, what="the deleted workload gone")


def _audit_entry(env: Env, uid: str) -> dict[str, Any] | None:
    """The server's audit entry of the admission request ``uid``, if stored yet."""
    for row in env.admin("GET", "/api/v1/audit", expect=200, params={"limit": 10000}):
        if row["detail"].get("uid") == uid:
            return dict(row)
    return None


def test_every_decision_is_audited(env: Env) -> None:
    body = review(workload("CronJob", "nightly", NS, [env.ref("bad")]))
    _denied(env.hooks["enforce"].validate(body))
    uid = body["request"]["uid"]

    def entry() -> dict[str, Any] | None:
        return _audit_entry(env, uid)

    row = wait_for(entry, timeout=30, interval=0.1, what="the audit entry")
    assert row["action"] == "admission.deny" and row["actor"] == "admission:kube-enforcer"
    assert row["target"] == f"test/{NS}/CronJob/nightly"
    d = row["detail"]
    assert d["user"] == "kubernetes-admin" and d["operation"] == "CREATE"
    assert d["images"][0]["digest"] == env.images["bad"]
    assert any(CVE in r for r in d["images"][0]["reasons"])
    # excluded namespaces are allowed unseen, and audited as such
    system = review(workload("Pod", "coredns-x", "kube-system", [env.ref("bad")]))
    assert env.hooks["enforce"].validate(system)["allowed"] is True
    own = review(workload("Pod", "moray-x", "moray", [env.ref("bad")]))
    assert env.hooks["enforce"].validate(own)["allowed"] is True
    uid = system["request"]["uid"]
    row = wait_for(entry, timeout=30, interval=0.1, what="the excluded request's entry")
    assert row["action"] == "admission.allow"
    assert row["detail"]["excluded"] == "namespace kube-system is excluded"


def test_server_unreachable_fail_closed_and_open(env: Env) -> None:
    pod = workload("Pod", "web", NS, [env.ref("good")])
    message = _denied(env.hooks["closed"].validate(review(pod)))
    assert "could not be checked: server unreachable" in message
    assert "failurePolicy: closed" in message
    answer = env.hooks["open"].validate(review(pod))
    assert answer["allowed"] is True
    assert any(w.startswith("allowed (failurePolicy: open): image") and
               "server unreachable" in w for w in answer["warnings"]), answer


def test_malformed_requests_get_a_clear_400(env: Env) -> None:
    hook = env.hooks["enforce"]
    good = review(workload("Pod", "web", NS, [env.ref("good")]))
    wrong_version = {**good, "apiVersion": "admission.k8s.io/v1beta1"}
    no_uid = copy.deepcopy(good)
    del no_uid["request"]["uid"]
    bad_containers = copy.deepcopy(good)
    bad_containers["request"]["object"]["spec"]["containers"] = {"name": "c0"}
    no_image = copy.deepcopy(good)
    del no_image["request"]["object"]["spec"]["containers"][0]["image"]
    bad_op = copy.deepcopy(good)
    bad_op["request"]["operation"] = "PATCH"
    cases: list[tuple[bytes, str]] = [
        (b"{not json", "body: not JSON"),
        (b"[]", "body: expected an AdmissionReview object"),
        (json.dumps(wrong_version).encode(), "admissionReviewVersions: [v1]"),
        (json.dumps(no_uid).encode(), "request.uid: missing"),
        (json.dumps(bad_containers).encode(),
         "request.object.spec.containers: expected a list"),
        (json.dumps(no_image).encode(), "request.object.spec.containers[0].image: missing"),
        (json.dumps(bad_op).encode(), "request.operation: 'PATCH' is not one of"),
        (json.dumps({**good, "request": "x"}).encode(), "request: expected an object"),
    ]
    for body, expected in cases:
        r = hook.http.post("/validate", content=body)
        assert r.status_code == 400, (body[:80], r.status_code, r.text)
        assert expected in r.json()["error"], (expected, r.text)
    many = review(workload("Pod", "many", NS, [f"r.example/app{i}:1" for i in range(65)]))
    r = hook.http.post("/validate", content=json.dumps(many))
    assert r.status_code == 400 and "65 distinct images, more than 64" in r.json()["error"]
    huge = hook.http.post("/validate", content=b" " * (9 << 20))
    assert huge.status_code == 413
    assert hook.http.get("/healthz").status_code == 200
    assert hook.validate(good)["allowed"] is True      # still serving
    assert "moray_kube_malformed_requests_total 10.0" in hook.http.get("/metrics").text


def test_client_certificates_when_asked_for(env: Env, tmp_path: Path) -> None:
    """--client-ca: only a client with a certificate from that CA gets an answer (the API
    server's admission client certificate); others fail the TLS handshake."""
    import httpx

    from moray.controlplane.server.pki import Pki

    hook = env.hooks["mtls"]
    body = review(workload("Pod", "web", NS, [env.ref("good")]))
    with pytest.raises(httpx.TransportError):
        hook.http.post("/validate", json=body)
    key, cert = Pki.load_or_create(env.server.data_dir / "pki").issue_gateway_cert(
        "kube-apiserver", [])
    (tmp_path / "c.key").write_bytes(key)
    (tmp_path / "c.pem").write_bytes(cert)
    hook.ca.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    with httpx.Client(base_url=f"https://127.0.0.1:{hook.port}", verify=hook.ca) as client:
        r = client.post("/validate", json=body)
    assert r.status_code == 200 and r.json()["response"]["allowed"] is True


def test_a_changed_verdict_changes_the_next_decision_without_a_restart(env: Env) -> None:
    hook = env.hooks["enforce"]
    pod = workload("Pod", "flip", NS, [env.ref("good")])
    assert hook.validate(review(pod))["allowed"] is True
    digest = env.images["good"]
    operator = Api(env.server.url, env.server.admin_token)

    def verdict(passed: bool, reasons: list[str]) -> None:
        operator("POST", f"/api/v1/images/{digest}/verdicts", expect=200, json={
            "image": env.ref("good"), "policy": "strict", "passed": passed,
            "reasons": reasons})

    try:
        verdict(False, ["1 vulnerabilities at unknown or above (e.g. CVE-2099-0001 in six)"])
        answer = wait_for(lambda: (a := hook.validate(review(pod)))["allowed"] is False and a,
                          timeout=30, interval=0.2, what="the new verdict applied")
        assert "CVE-2099-0001" in answer["status"]["message"]
    finally:
        verdict(True, [])
    wait_for(lambda: hook.validate(review(pod))["allowed"], timeout=30, interval=0.2,
             what="the verdict restored")


def test_inventory_on_postgresql(pg_base: str, tmp_path: Path) -> None:
    """The server side alone on PostgreSQL: findings stored with a verdict, reviews
    inventoried, the CVE query, a refused update, a DELETE."""
    from tests.helpers.postgres import create_database

    server = ServerProcess(tmp_path / "server", database_url=create_database(pg_base),
                           extra_args=("--scan-workers", "0")).start()
    try:
        api = server.api()
        digest = "sha256:" + "ab" * 32
        api("POST", f"/api/v1/images/{digest}/verdicts", expect=200, json={
            "image": "r.example/app:1", "policy": "strict", "passed": False,
            "reasons": ["x"], "vulnerabilities": [
                {"id": "GHSA-j8r2-6x86-q33q", "severity": "medium", "package": "requests",
                 "version": "2.19.0", "aliases": [CVE, "PYSEC-2018-28"]}]})
        image = {"container_type": "container", "container": "app", "image":
                 "r.example/app:1", "digest": digest, "verdict": "non-compliant",
                 "reasons": ["x"]}
        rev = {"uid": "u1", "namespace": "ns", "kind": "Deployment", "name": "app",
               "operation": "CREATE", "allowed": True, "decision": "warn",
               "images": [image]}
        api("POST", "/api/v1/admission/reviews", expect=200,
            json={"cluster": "c", "reviews": [rev]})
        for name in (CVE, "GHSA-j8r2-6x86-q33q", "PYSEC-2018-28"):
            (w,) = api("GET", "/api/v1/workloads", expect=200, params={"vulnerability": name})
            assert w["name"] == "app" and w["images"][0]["matched"][0]["id"] == \
                "GHSA-j8r2-6x86-q33q"
        assert api("GET", "/api/v1/workloads", expect=200,
                   params={"vulnerability": "CVE-2000-0001"}) == []
        vulns = api("GET", f"/api/v1/images/{digest}/vulnerabilities", expect=200)
        assert vulns == [{"id": "GHSA-j8r2-6x86-q33q", "severity": "medium", "package":
                          "requests", "version": "2.19.0", "fixed_version": "",
                          "aliases": sorted([CVE, "PYSEC-2018-28"])}]
        # a refused update keeps what runs; a DELETE removes it
        refused = {**rev, "uid": "u2", "operation": "UPDATE", "allowed": False,
                   "decision": "deny", "images": [{**image, "image": "r.example/app:2"}]}
        api("POST", "/api/v1/admission/reviews", expect=200,
            json={"cluster": "c", "reviews": [refused]})
        (w,) = api("GET", "/api/v1/workloads", expect=200)
        assert w["images"][0]["image"] == "r.example/app:1" and w["decision"] == "warn"
        gone = {**rev, "uid": "u3", "operation": "DELETE", "decision": "allow", "images": []}
        api("POST", "/api/v1/admission/reviews", expect=200,
            json={"cluster": "c", "reviews": [gone]})
        assert api("GET", "/api/v1/workloads", expect=200) == []
        actions = [a["action"] for a in api("GET", "/api/v1/audit", expect=200,
                                            params={"limit": 1000})]
        assert actions.count("admission.warn") == 1 and "admission.deny" in actions
        # a viewer reads the inventory, may not write reviews
        viewer = api("POST", "/api/v1/tokens", expect=201,
                     json={"name": "v", "role": "viewer"})["token"]
        assert server.api(viewer).status("GET", "/api/v1/workloads") == 200
        assert server.api(viewer).status("POST", "/api/v1/admission/reviews",
                                         json={"reviews": []}) == 403
        # the webhook's own role: its three calls, nothing else
        hook = server.api(api("POST", "/api/v1/tokens", expect=201,
                              json={"name": "k", "role": "admission"})["token"])
        assert hook.status("POST", "/api/v1/admission/reviews", json={"reviews": []}) == 200
        assert hook.status("GET", f"/api/v1/images/{digest}/verdicts") == 200
        for method, path in (("GET", "/api/v1/policies"), ("GET", "/api/v1/events"),
                             ("GET", "/api/v1/workloads"), ("POST", "/api/v1/tokens"),
                             ("GET", "/api/v1/agents")):
            assert hook.status(method, path) == 403, path
    finally:
        server.stop()
