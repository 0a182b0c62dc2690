"""Which policies cover a container (or the host): selector matching. Pure.

A container is whatever agent.enrich.containers.ContainerResolver returns (duck-typed by
the :class:`ContainerLike` protocol, so tests use plain records). ``None`` means a host
process. The slot mask of a container is what apply.py writes into mr_pscope.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Protocol

from moray.api.policy.model import ContainerSelector, Policy


class ContainerLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def runtime(self) -> str: ...
    @property
    def image(self) -> str | None: ...
    @property
    def image_digest(self) -> str | None: ...
    @property
    def pod_namespace(self) -> str | None: ...


def _labels(c: ContainerLike, attr: str) -> Mapping[str, str]:
    # agent.enrich.containers.Container carries labels / pod_labels (empty where the
    # runtime keeps none in files); a record without them matches no label selector.
    value = getattr(c, attr, None)
    return value if isinstance(value, Mapping) else {}


def _any_glob(patterns: Iterable[str], *values: str | None) -> bool:
    return any(v is not None and fnmatchcase(v, pat) for pat in patterns for v in values)


def _image_forms(image: str | None) -> tuple[str | None, ...]:
    """The image as recorded, plus its docker.io short forms (busybox:1 ~
    docker.io/library/busybox:1)."""
    if image is None:
        return (None,)
    forms = [image]
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if image.startswith(prefix):
            forms.append(image[len(prefix):])
    if "/" not in image.split(":")[0]:
        forms.append("docker.io/library/" + image)
    return tuple(forms)


def selects(sel: ContainerSelector, c: ContainerLike) -> bool:
    if sel.images and not _any_glob(sel.images, *_image_forms(c.image), c.image_digest):
        return False
    if sel.names and not _any_glob(sel.names, c.name, c.id):
        return False
    if sel.runtimes and not _any_glob(sel.runtimes, c.runtime):
        return False
    if sel.namespaces and not _any_glob(sel.namespaces, c.pod_namespace):
        return False
    labels = _labels(c, "labels")
    if any(labels.get(k) != v for k, v in sel.labels):
        return False
    pod_labels = _labels(c, "pod_labels")
    return not any(pod_labels.get(k) != v for k, v in sel.pod_labels)


def covers(policy: Policy, c: ContainerLike | None) -> bool:
    if c is None:
        return policy.scope.host
    return policy.scope.containers is not None and selects(policy.scope.containers, c)


def slots_for(c: ContainerLike | None, slotted: Iterable[tuple[int, Policy]]) -> int:
    """Mask of the slots whose policy covers *c* (None: the host)."""
    mask = 0
    for slot, p in slotted:
        if covers(p, c):
            mask |= 1 << slot
    return mask
