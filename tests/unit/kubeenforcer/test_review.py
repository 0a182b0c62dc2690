"""review.parse on the request shapes the API server sends, and on hostile ones."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from moray.controlplane.kubeenforcer.review import Container, ReviewError, parse
from tests.helpers.kube import KINDS, pod_spec, review, workload

IMG = "registry.example/app:1"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_yields_its_containers(kind: str) -> None:
    obj = workload(kind, "w", "ns", [IMG, "b:2"], init=["i:3"])
    r = parse(review(obj))
    assert r.checked and (r.kind, r.namespace, r.name, r.operation) == (kind, "ns", "w",
                                                                         "CREATE")
    assert r.containers == (Container("container", "c0", IMG), Container("container", "c1",
                                                                          "b:2"),
                            Container("init", "init0", "i:3"))
    assert r.user == "kubernetes-admin" and not r.dry_run
    assert r.controlled == (kind == "ReplicaSet")
    assert dict(r.template_labels) == ({} if kind == "Pod" else {"app": "w"})


def test_ephemeral_update_and_previous_containers() -> None:
    old = workload("Pod", "p", "ns", [IMG])
    new = copy.deepcopy(old)
    new["spec"] = pod_spec([IMG], ephemeral=["dbg:1"])
    r = parse(review(new, operation="UPDATE", old=old, sub_resource="ephemeralcontainers"))
    assert r.sub_resource == "ephemeralcontainers"
    assert Container("ephemeral", "debugger-0", "dbg:1") in r.containers
    assert r.previous == frozenset({Container("container", "c0", IMG)})


def test_delete_has_no_object_and_runs_nothing() -> None:
    r = parse(review(None, operation="DELETE", old=workload("Deployment", "d", "ns", [IMG])))
    assert r.operation == "DELETE" and r.name == "d" and r.containers == ()


def test_unknown_kind_is_not_checked() -> None:
    body = review(workload("Pod", "p", "ns", [IMG]))
    body["request"]["kind"] = {"group": "example.com", "version": "v1", "kind": "Pod"}
    r = parse(body)
    assert not r.checked and r.containers == ()


def _broken(change: Any) -> dict[str, Any]:
    body = review(workload("Deployment", "d", "ns", [IMG]))
    change(body)
    return body


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b.update(apiVersion="admission.k8s.io/v1beta1"), "admissionReviewVersions"),
    (lambda b: b.update(kind="Pod"), "kind AdmissionReview"),
    (lambda b: b.pop("request"), "request: missing"),
    (lambda b: b["request"].update(uid=7), "request.uid: expected a string"),
    (lambda b: b["request"].update(kind="Deployment"), "request.kind: expected an object"),
    (lambda b: b["request"].update(object=None), "request.object: missing for CREATE"),
    (lambda b: b["request"]["object"].update(spec=[]), "request.object.spec: expected an"),
    (lambda b: b["request"]["object"]["spec"].pop("template"),
     "request.object.spec.template: missing"),
    (lambda b: b["request"]["object"]["spec"]["template"]["spec"].update(
        initContainers=[1]), "spec.template.spec.initContainers[0]: expected an object"),
    (lambda b: b["request"]["object"]["spec"]["template"]["spec"]["containers"][0].update(
        image=["x"]), "containers[0].image: expected a string"),
    (lambda b: b["request"]["object"]["metadata"].update(labels={"a": 1}),
     "labels: expected a map of strings"),
    (lambda b: b["request"].update(dryRun="yes"), "request.dryRun: expected a boolean"),
])
def test_malformed_reviews_name_the_field(change: Any, message: str) -> None:
    with pytest.raises(ReviewError, match=None) as err:
        parse(_broken(change))
    assert message in str(err.value)


@pytest.mark.parametrize("doc", [None, [], "x", 1, {"apiVersion": None}])
def test_not_an_object(doc: Any) -> None:
    with pytest.raises(ReviewError):
        parse(doc)
