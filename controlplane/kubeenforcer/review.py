"""An AdmissionReview v1 request -> the workload it admits and the images it would run.

The API server sends the whole object: a Pod, or a workload holding a pod template
(Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, ReplicationController: at
``spec.template``; CronJob: at ``spec.jobTemplate.spec.template``). Every container list
of the pod spec is read: ``containers``, ``initContainers`` and ``ephemeralContainers``
(added to a running pod through the ``pods/ephemeralcontainers`` subresource, as
``kubectl debug`` does). Anything that is not the shape the API server sends is a
``ReviewError``, which the app answers with 400, naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moray.errors import ControlPlaneError

API_VERSION = "admission.k8s.io/v1"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
# (API group, kind) -> where the pod spec is inside the object
POD_SPEC_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): ("spec",),
    ("", "ReplicationController"): ("spec", "template", "spec"),
    ("apps", "Deployment"): ("spec", "template", "spec"),
    ("apps", "ReplicaSet"): ("spec", "template", "spec"),
    ("apps", "StatefulSet"): ("spec", "template", "spec"),
    ("apps", "DaemonSet"): ("spec", "template", "spec"),
    ("batch", "Job"): ("spec", "template", "spec"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_LISTS = (("containers", "container"), ("initContainers", "init"),
                   ("ephemeralContainers", "ephemeral"))


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}


class ReviewError(ControlPlaneError):
    """The request is not an AdmissionReview v1 the webhook can read; the message says
    which field."""


@dataclass(frozen=True, slots=True)
class Container:
    type: str      # container, init, ephemeral
    name: str
    image: str


@dataclass(frozen=True, slots=True)
class Review:
    uid: str
    api_version: str
    group: str
    kind: str
    namespace: str
    name: str
    operation: str
    sub_resource: str
    user: str
    dry_run: bool
    labels: Mapping[str, str]           # the object's labels
    template_labels: Mapping[str, str]  # its pod template's (empty for a Pod)
    controlled: bool                    # owned by a controller (a ReplicaSet's pod, ...)
    containers: tuple[Container, ...]   # every container of the pod spec, in order
    previous: frozenset[Container]      # UPDATE: the containers of the old object

    @property
    def checked(self) -> bool:
        """A workload kind whose images the webhook judges."""
        return (self.group, self.kind) in POD_SPEC_PATHS


def _get(doc: Any, key: str, kind: type | tuple[type, ...], where: str, default: Any = None
         ) -> Any:
    value = doc.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        kinds = (kind,) if isinstance(kind, type) else kind
        names = "/".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise ReviewError(f"{where}{key}: expected {names}")
    return value


def _labels(meta: dict[str, Any], where: str) -> dict[str, str]:
    labels = _get(meta, "labels", dict, where, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ReviewError(f"{where}labels: expected a map of strings")
    return dict(labels)


def _containers(spec: dict[str, Any], where: str) -> list[Container]:
    out: list[Container] = []
    for key, kind in CONTAINER_LISTS:
        items = _get(spec, key, list, where, [])
        for i, item in enumerate(items):
            at = f"{where}{key}[{i}]."
            if not isinstance(item, dict):
                raise ReviewError(f"{where}{key}[{i}]: expected an object")
            name = _get(item, "name", str, at, "")
            image = _get(item, "image", str, at, "")
            if not image:
                raise ReviewError(f"{at}image: missing (a container without an image)")
            out.append(Container(kind, name, image))
    return out


def _pod_spec(obj: dict[str, Any], path: tuple[str, ...]) -> tuple[dict[str, Any], str,
                                                                   dict[str, Any]]:
    """The pod spec, where it is, and the pod template's metadata (if there is one)."""
    node: Any = obj
    where = "request.object."
    template_meta: dict[str, Any] = {}
    for i, key in enumerate(path):
        node = _get(node, key, dict, where, None)
        if node is None:
            raise ReviewError(f"{where}{key}: missing")
        if key == "template" and i + 1 < len(path):
            template_meta = _get(node, "metadata", dict, f"{where}template.", {})
        where += key + "."
    return node, where, template_meta


def parse(doc: Any) -> Review:
    """``doc``: the decoded JSON body of the API server's request."""
    if not isinstance(doc, dict):
        raise ReviewError("body: expected an AdmissionReview object")
    api_version = doc.get("apiVersion")
    if api_version != API_VERSION or doc.get("kind") != "AdmissionReview":
        raise ReviewError(f"body: expected apiVersion {API_VERSION}, kind AdmissionReview "
                          f"(got {str(api_version)[:64]!r}, {str(doc.get('kind'))[:64]!r}); "
                          "set admissionReviewVersions: [v1] in the webhook configuration")
    req = _get(doc, "request", dict, "", None)
    if req is None:
        raise ReviewError("request: missing")
    uid = _get(req, "uid", str, "request.", "")
    if not uid:
        raise ReviewError("request.uid: missing")
    operation = _get(req, "operation", str, "request.", "")
    if operation not in OPERATIONS:
        raise ReviewError(f"request.operation: {operation[:32]!r} is not one of "
                          f"{', '.join(sorted(OPERATIONS))}")
    gvk = _get(req, "kind", dict, "request.", None)
    if gvk is None:
        raise ReviewError("request.kind: missing")
    group = _get(gvk, "group", str, "request.kind.", "")
    kind = _get(gvk, "kind", str, "request.kind.", "")
    if not kind:
        raise ReviewError("request.kind.kind: missing")
    user = _get(_get(req, "userInfo", dict, "request.", {}), "username", str,
                "request.userInfo.", "")
    obj = _get(req, "object", dict, "request.", None)
    old = _get(req, "oldObject", dict, "request.", None)
    meta = _get(obj or old or {}, "metadata", dict, "request.object.", {})
    name = _get(req, "name", str, "request.", "") or _get(meta, "name", str,
                                                          "request.object.metadata.", "")
    owners = _get(meta, "ownerReferences", list, "request.object.metadata.", [])
    review = dict(
        uid=uid, api_version=api_version, group=group, kind=kind,
        namespace=_get(req, "namespace", str, "request.", ""), name=name,
        operation=operation, sub_resource=_get(req, "subResource", str, "request.", ""),
        user=user, dry_run=bool(_get(req, "dryRun", bool, "request.", False)),
        labels=_labels(meta, "request.object.metadata."),
        controlled=any(isinstance(o, dict) and o.get("controller") is True for o in owners))
    path = POD_SPEC_PATHS.get((group, kind))
    if path is None or operation in ("DELETE", "CONNECT"):
        return Review(**review, template_labels={}, containers=(), previous=frozenset())
    if obj is None:
        raise ReviewError(f"request.object: missing for {operation}")
    spec, where, template_meta = _pod_spec(obj, path)
    containers = tuple(_containers(spec, where))
    previous: frozenset[Container] = frozenset()
    if operation == "UPDATE" and old is not None:
        try:
            old_spec, old_where, _ = _pod_spec(old, path)
            previous = frozenset(_containers(old_spec, old_where))
        except ReviewError:
            previous = frozenset()   # an unreadable old object: check every container
    return Review(**review, template_labels=_labels(template_meta, "template.metadata."),
                  containers=containers, previous=previous)
