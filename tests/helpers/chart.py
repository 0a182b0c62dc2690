"""The Helm chart (packaging/helm/moray) rendered offline by Helm's own engine, for tests.

    docs = render({"gateway": {"enabled": True, ...}})
    ds = one(docs, "DaemonSet")
    validate(docs)        # every object against the Kubernetes API schemas, offline

Rendering is packaging/kubernetes/generate.py's (the plain manifests come from it too);
schemas are kubernetes-validate's bundled ones (strict: unknown fields refused).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import kubernetes_validate

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "packaging" / "helm" / "moray"
GENERATE = ROOT / "packaging" / "kubernetes" / "generate.py"
# the oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas
KUBE_VERSIONS = ("1.25.0", "1.37.0")


def _generate() -> Any:
    spec = importlib.util.spec_from_file_location("moray_k8s_generate", GENERATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _generate()


def render(values: dict[str, Any] | None = None, *, name: str = "moray",
           namespace: str = "moray-system") -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = generate.render(values, name=name, namespace=namespace)
    return docs


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in kinds(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}: {[d['metadata'] for d in found]}"
    return found[0]


def validate(docs: list[dict[str, Any]]) -> None:
    """Every object against the API schemas of each of KUBE_VERSIONS (strict)."""
    for doc in docs:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} against "
                                     f"{version}: {path}: {err.message}") from None
