"""The Helm chart (packaging/helm/moray): rendered by Helm's engine with several value
sets, linted, bad values refused by values.schema.json or the templates, and every object
valid against the Kubernetes API schemas (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.helpers.chart import CHART, kinds, one, render, validate

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
GATEWAY = {"gateway": {"enabled": True, "pki": {"existingSecret": "moray-gateway-pki"},
                       "siem": {"syslog": ["tls://siem.example.com:6514"],
                                "webhook": ["https://hooks.example.com/moray"]}}}
POSTGRES = {"server": {"replicas": 3, "pki": {"existingSecret": "moray-pki"},
                       "persistence": {"enabled": False},
                       "database": {"type": "postgresql",
                                    "postgresql": {"existingSecret": "moray-db"}}}}

KUBE_ENFORCER = {"kubeEnforcer": {"enabled": True, "caPem": CA,
                                  "token": {"existingSecret": "moray-admission"}}}
KUBE_ENFORCER_VARIANT = {"kubeEnforcer": {
    "enabled": True, "caPem": CA, "token": {"value": "moray-api-abc"}, "replicas": 1,
    "certificate": {"source": "secret", "existingSecret": "webhook-tls"},
    "mode": "monitor", "failurePolicy": "open", "unregistered": "scan", "timeoutSeconds": 30,
    "excludeNamespaces": ["monitoring"], "inventoryDeletes": False,
    "settings": {"cluster": "prod", "policies": ["strict"],
                 "scan": {"policy": "kind: ImageAssurancePolicy\n", "budget": 20},
                 "excludeLabels": {"moray.io/skip": "true"},
                 "registries": {"registry.example.com": {"credentials": "env:REG"}}}},
    "server": {"http": {"tls": False}}, "agent": {"enrollment": {"caSha256": "ab" * 32}},
    "networkPolicy": {"kubeEnforcerFrom": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]}}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gateway": {**GATEWAY, "networkPolicy": {
        "agentsFrom": [{"ipBlock": {"cidr": "192.0.2.0/24"}}],
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}],
        "gatewayEgress": [{"ports": [{"port": 6514, "protocol": "TCP"}]}]}},
    "postgres": POSTGRES,
    "postgres-url": {"server": {"database": {"type": "postgresql", "postgresql": {
        "url": "postgresql://moray:secret@db.example.com/moray"}}}},
    "no-networkpolicy": {"networkPolicy": {"enabled": False}},
    "inline-enrolment": {"agent": {"enrollment": {"token": "moray-enroll-abc", "caPem": CA},
                                   "labels": {"zone": "a", "team.example.com/owner": "sec"},
                                   "localPolicies": {"deny-shell.yaml": "kind: Policy\n"}}},
    "plain-http-pinned-ca": {"server": {"http": {"tls": False}},
                             "agent": {"enrollment": {"caSha256": "ab" * 32}},
                             "networkPolicy": {"serverEgressAll": True}},
    "agent-only-local": {"server": {"enabled": False},
                         "agent": {"enrollment": {"enabled": False}, "output": "/dev/null"}},
    "agent-external-server": {"server": {"enabled": False}, "agent": {"enrollment": {
        "serverAddress": "moray.example.com:7443", "existingSecret": "enrol"}}},
    "unload": {"agent": {"unloadOnly": True}},
    "kube-enforcer": KUBE_ENFORCER,
    "kube-enforcer-variant": KUBE_ENFORCER_VARIANT,
    "kube-enforcer-external-server": {"server": {"enabled": False}, "agent": {"enabled": False},
                                      "kubeEnforcer": {**KUBE_ENFORCER["kubeEnforcer"],
                                                       "serverUrl": "https://moray.example.com"}},
    "digest-and-registry": {"image": {"registry": "registry.example.com", "tag": "9.9.9"},
                            "agent": {"image": {"repository": "moray/agent",
                                                "digest": "sha256:" + "0" * 64}}},
}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_renders_valid_kubernetes_objects(name: str) -> None:
    docs = render(VALUE_SETS[name])
    assert docs
    validate(docs)


@pytest.mark.parametrize("name", ["defaults", "gateway", "postgres", "unload", "kube-enforcer",
                                  "kube-enforcer-variant"])
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace="moray-system",
                       kube_version="v1.25.0")
    assert report["errors"] == []
    # info only (Helm recommends an icon; the project has none to point at)
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


BAD_VALUES: dict[str, dict[str, Any]] = {
    "unknown top-level key": {"agnet": {"enabled": True}},
    "unknown agent key": {"agent": {"hostNetwork": True}},
    "ring not a power of 2": {"agent": {"ringMb": 3}},
    "metrics port out of range": {"agent": {"metricsPort": 70000}},
    "surge: two agents on a node": {"agent": {"updateStrategy": {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}}}},
    "nothing may be unavailable, nothing may surge": {"agent": {"updateStrategy": {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}}}},
    "database type": {"server": {"database": {"type": "mysql"}}},
    "server as root": {"server": {"runAsUser": 0}},
    "negative replicas": {"server": {"replicas": -1}},
    "enabled not a boolean": {"gateway": {"enabled": "yes"}},
    "syslog url scheme": {"gateway": {"siem": {"syslog": ["siem:514"]}}},
    "ca sha256 not hex": {"agent": {"enrollment": {"caSha256": "xyz"}}},
    "ca not PEM": {"agent": {"enrollment": {"caPem": "not a certificate"}}},
    "policy file name": {"agent": {"localPolicies": {"../etc/passwd": "x"}}},
    "label with a comma": {"agent": {"labels": {"zone": "a,b"}}},
    "bad digest": {"agent": {"image": {"repository": "moray/agent", "digest": "latest"}}},
    "pull policy": {"image": {"pullPolicy": "Sometimes"}},
    "volume size": {"server": {"persistence": {"size": "ten gigs"}}},
    "relative output path": {"agent": {"output": "events.json"}},
    "webhook timeout over 30 s": {"kubeEnforcer": {"timeoutSeconds": 31}},
    "failure policy in the API server's words": {"kubeEnforcer": {"failurePolicy": "Fail"}},
    "certificate source": {"kubeEnforcer": {"certificate": {"source": "cert-manager"}}},
    "unknown kube-enforcer key": {"kubeEnforcer": {"caBundle": "x"}},
    "excluded namespace name": {"kubeEnforcer": {"excludeNamespaces": ["Kube System"]}},
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_refuses_bad_values(case: str) -> None:
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(BAD_VALUES[case])
    with pytest.raises(helm.HelmValuesError):     # and so does an install
        render(BAD_VALUES[case])


REFUSED_COMBINATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "two servers on SQLite": ({"server": {"replicas": 2}}, "postgresql"),
    "two servers, own CAs": ({"server": {"replicas": 2, "database": {
        "type": "postgresql", "postgresql": {"url": "postgresql://db/m"}}}}, "pki.existingSecret"),
    "no volume, own CA": ({"server": {"persistence": {"enabled": False}, "database": {
        "type": "postgresql", "postgresql": {"url": "postgresql://db/m"}}}}, "new CA"),
    "no volume, SQLite": ({"server": {"persistence": {"enabled": False},
                                      "pki": {"existingSecret": "p"}}}, "SQLite"),
    "postgresql without URL": ({"server": {"database": {"type": "postgresql"}}}, "url"),
    "gateway without certificate": ({"gateway": {"enabled": True}}, "gateway.pki"),
    "agents with nowhere to enrol": ({"server": {"enabled": False}}, "serverAddress"),
    "token without CA": ({"agent": {"enrollment": {"token": "t"}}}, "caPem"),
    "pinned CA over HTTPS": ({"agent": {"enrollment": {"caSha256": "ab" * 32}}}, "plain HTTP"),
    "kube-enforcer without CA": ({"kubeEnforcer": {"enabled": True, "token": {
        "value": "t"}}}, "caPem"),
    "kube-enforcer without token": ({"kubeEnforcer": {"enabled": True, "caPem": CA}},
                                    "admission token"),
    "kube-enforcer with nowhere to ask": (
        {"server": {"enabled": False}, "agent": {"enabled": False},
         "kubeEnforcer": KUBE_ENFORCER["kubeEnforcer"]}, "serverUrl"),
    "kube-enforcer TLS Secret unnamed": ({"kubeEnforcer": {
        **KUBE_ENFORCER["kubeEnforcer"], "certificate": {"source": "secret"}}},
        "certificate.existingSecret"),
    "kube-enforcer setting the chart owns": ({"kubeEnforcer": {
        **KUBE_ENFORCER["kubeEnforcer"], "settings": {"failurePolicy": "open"}}},
        "settings.failurePolicy"),
    "scan on admission without a policy": ({"kubeEnforcer": {
        **KUBE_ENFORCER["kubeEnforcer"], "unregistered": "scan"}}, "scan.policy"),
    "scan budget beyond the request's": ({"kubeEnforcer": {
        **KUBE_ENFORCER["kubeEnforcer"], "unregistered": "scan", "settings": {
            "scan": {"policy": "p", "budget": 9}}}}, "scan.budget"),
}


@pytest.mark.parametrize("case", REFUSED_COMBINATIONS)
def test_templates_refuse_unworkable_combinations(case: str) -> None:
    values, says = REFUSED_COMBINATIONS[case]
    with pytest.raises(helm.HelmError, match=says):
        render(values)


def _container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    spec = one(docs, kind)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def test_agent_daemonset() -> None:
    docs = render()
    ds = one(docs, "DaemonSet", "moray-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod.get("hostNetwork") is not True
    assert pod["automountServiceAccountToken"] is False
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    agent = _container(docs, "DaemonSet", "agent")
    assert agent["securityContext"] == {"privileged": True}
    assert agent["args"][0] == "run"
    assert "--server=moray-server.moray-system.svc:7443" in agent["args"]
    assert "--enroll-server=moray-server.moray-system.svc:7444" in agent["args"]
    assert "--ca=/etc/moray/enrollment/ca.pem" in agent["args"]
    assert "--no-pin" not in agent["args"]          # enforcement outlives the pod
    # the token comes from the Secret, never on the command line
    assert not any("token" in a for a in agent["args"])
    env = {e["name"]: e for e in agent["env"]}
    assert env["MORAY_ENROLL_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "moray-agent-enrollment", "key": "token"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["startupProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    host = {path: volumes[m["name"]].get("hostPath", {}).get("path")
            for path, m in mounts.items()}
    assert host["/host"] == "/" and mounts["/host"]["readOnly"] is True
    assert mounts["/host"]["mountPropagation"] == "HostToContainer"
    assert host["/sys/fs/bpf"] == "/sys/fs/bpf"
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    assert host["/sys/kernel"] == "/sys/kernel"
    assert host["/sys/fs/cgroup"] == "/sys/fs/cgroup"
    assert host["/run/moray"] == "/run/moray"
    assert host["/var/lib/moray-agent"] == "/var/lib/moray-agent"
    # the enrolment Secret is the user's to create (no token given): none rendered
    assert kinds(docs, "Secret") == []


def test_no_component_gets_kubernetes_api_access() -> None:
    for values in VALUE_SETS.values():
        docs = render(values)
        assert [d["kind"] for d in docs if d["kind"] in {
            "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}] == []
        for sa in kinds(docs, "ServiceAccount"):
            assert sa["automountServiceAccountToken"] is False
        for kind in ("DaemonSet", "StatefulSet", "Deployment"):
            for d in kinds(docs, kind):
                assert d["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_server_statefulset() -> None:
    docs = render()
    sts = one(docs, "StatefulSet", "moray-server")
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    server = _container(docs, "StatefulSet", "server")
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for name in ("moray-server", "moray-server.moray-system", "moray-server.moray-system.svc",
                 "moray-server.moray-system.svc.cluster.local"):
        assert f"--name={name}" in server["args"]
    assert "--http-tls" in server["args"] and "--insecure-http" not in server["args"]
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http",
                                                  "scheme": "HTTPS"}
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    svc = one(docs, "Service", "moray-server")
    assert {p["port"] for p in svc["spec"]["ports"]} == {7443, 7444, 7080}


def test_server_on_postgresql() -> None:
    docs = render(POSTGRES)
    sts = one(docs, "StatefulSet", "moray-server")
    assert sts["spec"]["replicas"] == 3
    assert "volumeClaimTemplates" not in sts["spec"]
    server = _container(docs, "StatefulSet", "server")
    env = {e["name"]: e for e in server["env"]}
    assert env["MORAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "moray-db",
                                                                      "key": "url"}
    assert not any("postgresql" in a for a in server["args"])
    init = sts["spec"]["template"]["spec"]["initContainers"][0]
    assert init["name"] == "pki"
    # a URL given inline goes into a Secret of the chart's, not into the pod spec
    docs = render(VALUE_SETS["postgres-url"])
    secret = one(docs, "Secret", "moray-server-database")
    assert secret["stringData"]["url"].startswith("postgresql://")


def test_gateway_in_front_of_the_server() -> None:
    docs = render(VALUE_SETS["gateway"])
    gw = _container(docs, "Deployment", "gateway")
    assert gw["args"][:2] == ["run", "--server=moray-server.moray-system.svc:7443"]
    assert "--syslog=tls://siem.example.com:6514" in gw["args"]
    agent = _container(docs, "DaemonSet", "agent")
    # agents stream through the gateways and enrol at the server
    assert "--server=moray-gateway.moray-system.svc:7443" in agent["args"]
    assert "--enroll-server=moray-server.moray-system.svc:7444" in agent["args"]
    one(docs, "Service", "moray-gateway")
    assert len(kinds(docs, "NetworkPolicy")) == 3


def _peers(rule: dict[str, Any]) -> list[str]:
    return [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for p in rule.get("from", rule.get("to", [])) if "podSelector" in p]


def test_network_policies() -> None:
    docs = render(VALUE_SETS["gateway"])
    agent = one(docs, "NetworkPolicy", "moray-agent")["spec"]
    assert agent["policyTypes"] == ["Ingress", "Egress"]
    assert [r["ports"] for r in agent["ingress"]] == [[{"port": "metrics", "protocol": "TCP"}]]
    egress_to = [c for r in agent["egress"] for c in _peers(r)]
    assert egress_to == ["server", "gateway"]
    server = one(docs, "NetworkPolicy", "moray-server")["spec"]
    grpc = [r for r in server["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"]]
    assert sorted(c for r in grpc for c in _peers(r)) == ["agent", "gateway"]
    assert {"ipBlock": {"cidr": "192.0.2.0/24"}} in grpc[0]["from"]
    # defaults: agents accept no ingress at all
    agent = one(render(), "NetworkPolicy", "moray-agent")["spec"]
    assert agent["ingress"] == []
    assert kinds(render(VALUE_SETS["no-networkpolicy"]), "NetworkPolicy") == []


def test_inline_enrolment_and_local_policies() -> None:
    docs = render(VALUE_SETS["inline-enrolment"])
    secret = one(docs, "Secret", "moray-agent-enrollment")
    assert secret["stringData"] == {"token": "moray-enroll-abc", "ca.pem": CA}
    agent = _container(docs, "DaemonSet", "agent")
    assert "--label=team.example.com/owner=sec" in agent["args"]
    cm = one(docs, "ConfigMap", "moray-agent-policies")
    assert cm["data"] == {"deny-shell.yaml": "kind: Policy\n"}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/etc/moray/policies"]["readOnly"] is True


def test_local_mode_and_pinned_ca() -> None:
    agent = _container(render(VALUE_SETS["agent-only-local"]), "DaemonSet", "agent")
    assert not any(a.startswith(("--server", "--ca", "--enroll")) for a in agent["args"])
    assert "MORAY_ENROLL_TOKEN" not in {e["name"] for e in agent["env"]}
    docs = render(VALUE_SETS["plain-http-pinned-ca"])
    agent = _container(docs, "DaemonSet", "agent")
    assert f"--ca-sha256={'ab' * 32}" in agent["args"]
    assert "/etc/moray/enrollment" not in {m["mountPath"] for m in agent["volumeMounts"]}
    server = _container(docs, "StatefulSet", "server")
    assert "--insecure-http" in server["args"]
    assert server["readinessProbe"]["httpGet"]["scheme"] == "HTTP"


def test_unload_only_removes_pins_and_idles() -> None:
    pod = one(render(VALUE_SETS["unload"]), "DaemonSet")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"] == ["unload", "--pin-root=/sys/fs/bpf/moray"]
    assert init["volumeMounts"] == [{"name": "bpffs", "mountPath": "/sys/fs/bpf",
                                     "mountPropagation": "Bidirectional"}]
    (idle,) = pod["containers"]
    assert idle["command"] == ["sleep", "infinity"]
    assert "privileged" not in idle["securityContext"]


def test_images() -> None:
    docs = render()
    assert _container(docs, "DaemonSet", "agent")["image"] == "registry.local/moray/agent:0.1.0"
    assert _container(docs, "StatefulSet", "server")["image"] == \
        "registry.local/moray/server:0.1.0"
    # the names `make images` gives them (packaging/images/build)
    assert _container(render(GATEWAY), "Deployment", "gateway")["image"] == \
        "registry.local/moray/gateway:0.1.0"
    docs = render(VALUE_SETS["digest-and-registry"])
    assert _container(docs, "DaemonSet", "agent")["image"] == \
        "registry.example.com/moray/agent@sha256:" + "0" * 64
    assert _container(docs, "StatefulSet", "server")["image"] == \
        "registry.example.com/moray/server:9.9.9"


def test_rest_clients_in_the_server_pod_need_no_flags() -> None:
    env = {e["name"]: e.get("value") for e in
           _container(render(), "StatefulSet", "server")["env"]}
    assert env["MORAY_SERVER"] == "https://127.0.0.1:7080"
    assert env["MORAY_CA"] == "/var/lib/moray/pki/ca.pem"
    assert env["MORAY_DATA_DIR"] == "/var/lib/moray"     # admin.token
    env = {e["name"]: e.get("value") for e in _container(
        render(VALUE_SETS["plain-http-pinned-ca"]), "StatefulSet", "server")["env"]}
    assert env["MORAY_SERVER"] == "http://127.0.0.1:7080" and "MORAY_CA" not in env


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_arg_is_the_commands_own(name: str) -> None:
    """Each container's args parse with moray's own parser under the command's name (an
    unknown or misspelt flag would stop the pod at start)."""
    from moray.cli import parse

    for kind in ("DaemonSet", "StatefulSet", "Deployment"):
        for doc in kinds(render(VALUE_SETS[name]), kind):
            pod = doc["spec"]["template"]["spec"]
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                if not c.get("command", [""])[0].startswith("moray"):
                    continue          # sh (the pki copy), sleep (unloadOnly)
                args = [a.replace("$(NODE_NAME)", "node-1") for a in c["args"]]
                parsed = parse(args, alias=c["command"][0])
                assert callable(parsed.handler), (kind, c["name"])


def test_kube_enforcer_is_optional() -> None:
    docs = render()
    assert [d["metadata"]["name"] for d in docs if "kube-enforcer" in d["metadata"]["name"]
            ] == []
    server = _container(docs, "StatefulSet", "server")
    assert not any(a.startswith("--webhook-name") for a in server["args"])


def test_kube_enforcer() -> None:
    import base64

    import yaml

    docs = render(KUBE_ENFORCER)
    deploy = one(docs, "Deployment", "moray-kube-enforcer")
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert "podAntiAffinity" in pod["affinity"]
    c = _container(docs, "Deployment", "kube-enforcer")
    assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["args"][:2] == ["--server=https://moray-server.moray-system.svc:7080",
                             "--ca=/etc/moray-kube-enforcer/ca.pem"]
    assert "--cert-from-server" in c["args"] and "--port=8443" in c["args"]
    assert not any("token" in a for a in c["args"])
    env = {e["name"]: e for e in c["env"]}
    assert env["MORAY_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "moray-admission",
                                                               "key": "token"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "webhook", "scheme": "HTTPS"}
    assert c["resources"]["limits"]["memory"] == "384Mi"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["emptyDir"]["medium"] == "Memory"
    assert kinds(docs, "Secret") == []          # the token Secret is the user's
    config = yaml.safe_load(one(docs, "ConfigMap", "moray-kube-enforcer")["data"]["config.yaml"])
    assert config == {"namespace": "moray-system", "mode": "enforce", "unregistered": "deny",
                      "failurePolicy": "closed", "requestTimeout": 8,
                      "excludeNamespaces": ["kube-system", "moray-system"]}
    svc = one(docs, "Service", "moray-kube-enforcer")
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook",
                                     "protocol": "TCP"}]
    pdb = one(docs, "PodDisruptionBudget", "moray-kube-enforcer")
    assert pdb["spec"]["minAvailable"] == 1

    vwc = one(docs, "ValidatingWebhookConfiguration", "moray-kube-enforcer")
    images, deletes = vwc["webhooks"]
    assert base64.b64decode(images["clientConfig"]["caBundle"]).decode() == CA
    assert images["clientConfig"]["service"] == {"name": "moray-kube-enforcer",
                                                 "namespace": "moray-system",
                                                 "path": "/validate", "port": 443}
    assert images["failurePolicy"] == "Fail" and images["timeoutSeconds"] == 10
    assert images["sideEffects"] == "None" and images["admissionReviewVersions"] == ["v1"]
    assert images["namespaceSelector"]["matchExpressions"] == [{
        "key": "kubernetes.io/metadata.name", "operator": "NotIn",
        "values": ["kube-system", "moray-system"]}]
    covered = {(g, r) for rule in images["rules"] for g in rule["apiGroups"]
               for r in rule["resources"]}
    assert covered == {("", "pods"), ("", "pods/ephemeralcontainers"),
                       ("", "replicationcontrollers"), ("apps", "deployments"),
                       ("apps", "replicasets"), ("apps", "statefulsets"),
                       ("apps", "daemonsets"), ("batch", "jobs"), ("batch", "cronjobs")}
    assert {op for rule in images["rules"] for op in rule["operations"]} == {"CREATE", "UPDATE"}
    # deletes feed the inventory and are never blocked by a webhook outage
    assert deletes["failurePolicy"] == "Ignore"
    assert {op for rule in deletes["rules"] for op in rule["operations"]} == {"DELETE"}

    # the server issues the webhook's certificate for the Service's names only
    server = _container(docs, "StatefulSet", "server")
    assert [a for a in server["args"] if a.startswith("--webhook-name")] == [
        f"--webhook-name={n}" for n in (
            "moray-kube-enforcer", "moray-kube-enforcer.moray-system",
            "moray-kube-enforcer.moray-system.svc",
            "moray-kube-enforcer.moray-system.svc.cluster.local")]
    # network: the webhook port open (the API server is no pod), the server's REST API
    # open to the webhook
    np = one(docs, "NetworkPolicy", "moray-kube-enforcer")["spec"]
    assert np["ingress"] == [{"ports": [{"port": "webhook", "protocol": "TCP"}]}]
    assert [c for r in np["egress"] for c in _peers(r)] == ["server"]
    server_np = one(docs, "NetworkPolicy", "moray-server")["spec"]
    assert "kube-enforcer" in [c for r in server_np["ingress"] for c in _peers(r)]


def test_kube_enforcer_variant(tmp_path: Path) -> None:
    import yaml

    docs = render(KUBE_ENFORCER_VARIANT)
    c = _container(docs, "Deployment", "kube-enforcer")
    assert c["args"][0] == "--server=http://moray-server.moray-system.svc:7080"
    assert not any(a.startswith(("--ca=", "--cert-from-server")) for a in c["args"])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "webhook-tls"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["tls"]["readOnly"] is True
    assert kinds(docs, "PodDisruptionBudget") == []            # one replica
    secret = one(docs, "Secret", "moray-kube-enforcer-token")
    assert secret["stringData"] == {"token": "moray-api-abc"}
    config = yaml.safe_load(one(docs, "ConfigMap", "moray-kube-enforcer")["data"]["config.yaml"])
    assert config["mode"] == "monitor" and config["failurePolicy"] == "open"
    assert config["requestTimeout"] == 28 and config["cluster"] == "prod"
    assert config["scan"]["budget"] == 20
    assert config["excludeNamespaces"] == ["kube-system", "moray-system", "monitoring"]
    (images,) = one(docs, "ValidatingWebhookConfiguration")["webhooks"]
    assert images["failurePolicy"] == "Ignore" and images["timeoutSeconds"] == 30
    assert images["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "kube-system", "moray-system", "monitoring"]
    np = one(docs, "NetworkPolicy", "moray-kube-enforcer")["spec"]
    assert np["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    # a certificate kept in a Secret: the server issues none
    server = _container(docs, "StatefulSet", "server")
    assert not any(a.startswith("--webhook-name") for a in server["args"])
    # the config file the chart renders is one the webhook accepts
    from moray.controlplane.kubeenforcer import config as settings

    for values in (KUBE_ENFORCER, KUBE_ENFORCER_VARIANT):
        text = one(render(values), "ConfigMap", "moray-kube-enforcer")["data"]["config.yaml"]
        doc = yaml.safe_load(text)
        if "scan" in doc:
            doc["scan"]["policy"] = POLICY
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(doc))
        assert settings.load(path, server="https://s", token="t").request_timeout == \
            doc["requestTimeout"]


POLICY = ("apiVersion: moray/v1\nkind: ImageAssurancePolicy\nmetadata: {name: strict}\n"
          "spec: {failOn: unknown}\n")

