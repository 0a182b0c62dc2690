"""packaging/kubernetes (``kubectl apply -k``): generated from the chart and current, every
file the kustomization names exists, every object is valid for the Kubernetes API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.helpers.chart import GENERATE, generate, kinds, validate

KUSTOMIZE = GENERATE.parent


def test_manifests_are_current() -> None:
    stale = "is stale: run python packaging/kubernetes/generate.py"
    assert (KUSTOMIZE / "moray.yaml").read_text() == generate.manifests(), f"moray.yaml {stale}"
    assert (KUSTOMIZE / "unload" / "moray-unload.yaml").read_text() == \
        generate.unload_manifests(), f"unload/moray-unload.yaml {stale}"


def _resources(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((directory / resource).read_text()) if d]
    validate(docs)
    return docs


def test_kustomization_resources_are_valid() -> None:
    docs = _resources(KUSTOMIZE)
    assert [d["metadata"]["name"] for d in kinds(docs, "Namespace")] == ["moray-system"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "moray-system"}
    assert {d["kind"] for d in docs} >= {"DaemonSet", "StatefulSet", "Service",
                                         "NetworkPolicy", "ServiceAccount"}
    for doc in docs:    # nothing here is managed by Helm
        labels = doc["metadata"].get("labels", {})
        assert "helm.sh/chart" not in labels and "app.kubernetes.io/managed-by" not in labels


def test_unload_kustomization_replaces_the_agent() -> None:
    (ds,) = _resources(KUSTOMIZE / "unload")
    base = [d for d in _resources(KUSTOMIZE) if d["kind"] == "DaemonSet"]
    assert [(d["metadata"]["name"], d["metadata"]["namespace"]) for d in base] == \
        [(ds["metadata"]["name"], ds["metadata"]["namespace"])]
    pod = ds["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"][0] == "unload"
    assert pod["containers"][0]["command"] == ["sleep", "infinity"]
