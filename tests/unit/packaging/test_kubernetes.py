"""packaging/kubernetes (``kubectl apply -k``): generated from the chart and current, every
file the kustomization names exists, every object is valid for the Kubernetes API."""

from __future__ import annotations

import yaml

from tests.helpers.chart import GENERATE, generate, kinds, validate

KUSTOMIZE = GENERATE.parent


def test_manifests_are_current() -> None:
    assert (KUSTOMIZE / "moray.yaml").read_text() == generate.manifests(), \
        "packaging/kubernetes/moray.yaml is stale: run python packaging/kubernetes/generate.py"


def test_kustomization_resources_are_valid() -> None:
    kustomization = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((KUSTOMIZE / resource).read_text()) if d]
    validate(docs)
    assert [d["metadata"]["name"] for d in kinds(docs, "Namespace")] == ["moray-system"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "moray-system"}
    assert {d["kind"] for d in docs} >= {"DaemonSet", "StatefulSet", "Service",
                                         "NetworkPolicy", "ServiceAccount"}
    for doc in docs:    # nothing here is managed by Helm
        labels = doc["metadata"].get("labels", {})
        assert "helm.sh/chart" not in labels and "app.kubernetes.io/managed-by" not in labels
