"""AdmissionReview v1 requests as kube-apiserver sends them to a validating webhook, for
every pod-template kind, and a ``moray kube-enforcer`` process over real HTTPS.

The object shapes are what the API server holds after defaulting (``kubectl get -o
json`` of real objects, trimmed of status): apiVersion, kind, metadata with uid,
generation, labels and ownerReferences, defaulted pod specs (imagePullPolicy,
terminationMessagePath, dnsPolicy, restartPolicy, schedulerName, securityContext).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers.controlplane import ROOT, ServerProcess, free_port, wait_for
from tests.helpers.procs import Child

# kind -> (group, version, resource)
KINDS: dict[str, tuple[str, str, str]] = {
    "Pod": ("", "v1", "pods"),
    "Deployment": ("apps", "v1", "deployments"),
    "ReplicaSet": ("apps", "v1", "replicasets"),
    "StatefulSet": ("apps", "v1", "statefulsets"),
    "DaemonSet": ("apps", "v1", "daemonsets"),
    "Job": ("batch", "v1", "jobs"),
    "CronJob": ("batch", "v1", "cronjobs"),
}


def container(name: str, image: str) -> dict[str, Any]:
    return {"name": name, "image": image, "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "50m"}},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File"}


def pod_spec(images: list[str], *, init: list[str] | None = None,
             ephemeral: list[str] | None = None, restart: str = "Always") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [container(f"c{i}", img) for i, img in enumerate(images)],
        "dnsPolicy": "ClusterFirst", "enableServiceLinks": True, "preemptionPolicy":
        "PreemptLowerPriority", "priority": 0, "restartPolicy": restart,
        "schedulerName": "default-scheduler", "securityContext": {},
        "serviceAccount": "default", "serviceAccountName": "default",
        "terminationGracePeriodSeconds": 30,
        "tolerations": [{"effect": "NoExecute", "key": "node.kubernetes.io/not-ready",
                         "operator": "Exists", "tolerationSeconds": 300}]}
    if init:
        spec["initContainers"] = [container(f"init{i}", img) for i, img in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [
            {"name": f"debugger-{i}", "image": img, "imagePullPolicy": "IfNotPresent",
             "stdin": True, "tty": True, "targetContainerName": "c0",
             "terminationMessagePath": "/dev/termination-log",
             "terminationMessagePolicy": "File"} for i, img in enumerate(ephemeral)]
    return spec


def meta(name: str, namespace: str, labels: dict[str, str] | None = None,
         owner: dict[str, Any] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                         "generation": 1, "creationTimestamp": None,
                         "labels": labels or {"app": name}}
    if owner:
        m["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner["kind"],
                                 "name": owner["name"], "uid": str(uuid.uuid4()),
                                 "controller": True, "blockOwnerDeletion": True}]
    return m


def workload(kind: str, name: str, namespace: str, images: list[str], *,
             init: list[str] | None = None, labels: dict[str, str] | None = None,
             template_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A whole object of ``kind`` running ``images`` (and ``init`` containers)."""
    group, version, _ = KINDS[kind]
    api = f"{group}/{version}" if group else version
    restart = "OnFailure" if kind in ("Job", "CronJob") else "Always"
    spec = pod_spec(images, init=init, restart=restart)
    obj: dict[str, Any] = {"apiVersion": api, "kind": kind,
                           "metadata": meta(name, namespace, labels)}
    if kind == "Pod":
        obj["spec"] = spec
        return obj
    template = {"metadata": {"creationTimestamp": None,
                             "labels": template_labels or {"app": name}}, "spec": spec}
    selector = {"matchLabels": {"app": name}}
    if kind == "Deployment":
        obj["spec"] = {"replicas": 2, "revisionHistoryLimit": 10, "selector": selector,
                       "progressDeadlineSeconds": 600, "template": template,
                       "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                           "maxSurge": "25%", "maxUnavailable": "25%"}}}
    elif kind == "ReplicaSet":
        obj["metadata"]["ownerReferences"] = meta(name, namespace, owner={
            "kind": "Deployment", "name": name})["ownerReferences"]
        obj["spec"] = {"replicas": 2, "selector": selector, "template": template}
    elif kind == "StatefulSet":
        obj["spec"] = {"replicas": 3, "serviceName": name, "selector": selector,
                       "podManagementPolicy": "OrderedReady", "template": template,
                       "updateStrategy": {"type": "RollingUpdate",
                                          "rollingUpdate": {"partition": 0}},
                       "persistentVolumeClaimRetentionPolicy": {
                           "whenDeleted": "Retain", "whenScaled": "Retain"}}
    elif kind == "DaemonSet":
        obj["spec"] = {"selector": selector, "template": template, "revisionHistoryLimit": 10,
                       "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {
                           "maxSurge": 0, "maxUnavailable": 1}}}
    elif kind == "Job":
        obj["spec"] = {"backoffLimit": 6, "completionMode": "NonIndexed", "completions": 1,
                       "parallelism": 1, "suspend": False, "template": template}
    elif kind == "CronJob":
        obj["spec"] = {"schedule": "*/5 * * * *", "concurrencyPolicy": "Allow",
                       "failedJobsHistoryLimit": 1, "successfulJobsHistoryLimit": 3,
                       "suspend": False, "jobTemplate": {"metadata": {"creationTimestamp": None},
                                                         "spec": {"template": template}}}
    return obj


def review(obj: dict[str, Any] | None, *, operation: str = "CREATE",
           old: dict[str, Any] | None = None, sub_resource: str = "",
           kind: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """The AdmissionReview the API server posts for ``obj`` (``old`` on UPDATE/DELETE)."""
    source = obj or old or {}
    kind = kind or source["kind"]
    group, version, resource = KINDS[kind]
    gvk = {"group": group, "version": version, "kind": kind}
    gvr = {"group": group, "version": version, "resource": resource}
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()), "kind": gvk, "resource": gvr, "requestKind": gvk,
        "requestResource": gvr, "name": source["metadata"]["name"],
        "namespace": source["metadata"]["namespace"], "operation": operation,
        "userInfo": {"username": "kubernetes-admin",
                     "groups": ["system:masters", "system:authenticated"]},
        "object": obj, "oldObject": old, "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1",
                    "kind": {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions",
                             "DELETE": "DeleteOptions"}.get(operation, "CreateOptions")}}
    if sub_resource:
        request["subResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def issue_webhook_cert(server: ServerProcess, out: Path) -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1 from the server's CA (as the chart would)."""
    from moray.controlplane.server.pki import Pki

    pki = Pki.load_or_create(server.data_dir / "pki")
    key, cert = pki.issue_serving_cert("moray-kube-enforcer", ["127.0.0.1", "localhost"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "webhook.key").write_bytes(key)
    (out / "webhook.key").chmod(0o600)
    (out / "webhook.pem").write_bytes(cert)
    return out / "webhook.pem", out / "webhook.key"


class Webhook(Child):
    """``moray kube-enforcer`` on 127.0.0.1 (HTTPS), configured with ``settings`` (the
    YAML file's keys); ``server_url``: another address than the server's (unreachable)."""

    def __init__(self, tmp: Path, server: ServerProcess, token: str, name: str,
                 settings: dict[str, Any], server_url: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        if "--cert-from-server" in extra_args:      # the webhook writes them itself
            self.cert, self.key = self.dir / "tls" / "tls.crt", self.dir / "tls" / "tls.key"
            self.cert.parent.mkdir(exist_ok=True)
        else:
            self.cert, self.key = issue_webhook_cert(server, self.dir)
        (self.dir / "config.yaml").write_text(yaml.safe_dump(settings))
        self.port = free_port()
        self.log = self.dir / "webhook.log"
        self.cmd = [sys.executable, "-m", "moray.cli", "kube-enforcer",
                    "--server", server_url or server.url, "--token", token,
                    "--tls-cert", str(self.cert), "--tls-key", str(self.key),
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--config", str(self.dir / "config.yaml"), *extra_args]
        self.ca_file = server.data_dir / "pki" / "ca.pem"
        self.ca = ssl.create_default_context(cafile=str(self.ca_file))
        self.http = httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=self.ca,
                                 timeout=30)
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> Webhook:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=log, stderr=log,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        return self

    def wait_ready(self) -> Webhook:
        wait_for(self._healthy, timeout=60, interval=0.05,
                 what=f"moray kube-enforcer (log: {self.log})")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"kube-enforcer exited {self.proc.returncode}: "
                                 f"{self.log.read_text()[-3000:]}")
        if "--client-ca" in self.cmd:   # no client certificate here: a TCP probe
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return True
            return False
        with contextlib.suppress(httpx.TransportError):
            return self.http.get("/healthz").status_code == 200
        return False

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post("/validate", content=json.dumps(body),
                           headers={"Content-Type": "application/json"})
        assert r.status_code == 200, (r.status_code, r.text)
        doc = r.json()
        assert doc["apiVersion"] == "admission.k8s.io/v1" and doc["kind"] == "AdmissionReview"
        assert doc["response"]["uid"] == body["request"]["uid"]
        return dict(doc["response"])

    def close(self) -> None:
        self.http.close()      # idle keep-alive connections would hold the shutdown up
        self.stop()
