"""The decision, pure: a review, what was learnt about each of its images, and the
settings in; allowed or not, the message and the warnings out. No I/O, no clock.

Per container image (``Outcome.verdict``):

==============  ===================================================  ====================
verdict         when                                                 enforce mode
==============  ===================================================  ====================
compliant       every stored verdict (of ``policies``, if set) passed  allowed
non-compliant   one failed                                           denied: image, digest
                                                                     and failed controls
unregistered    no verdict (of a required policy) for the digest     ``unregistered``:
                (scan on admission: not within the budget)           deny / allow+warning
unresolved      the registry could not say what the reference is     ``failurePolicy``
unknown         the server could not be asked, nothing cached; or    ``failurePolicy``
                no answer within ``requestTimeout``
unchanged       UPDATE: the same container and image as before       allowed (judged when
                                                                     it was admitted)
==============  ===================================================  ====================

Monitor mode allows everything; what enforce mode would deny becomes a warning. A request
in an excluded namespace, or whose object (or pod template) carries every
``excludeLabels`` pair, is allowed without a look at its images.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from moray.api.imageverdicts import Verdict
from moray.api.imageverdicts import judge as judge_verdicts
from moray.controlplane.kubeenforcer.config import EnforcerConfig, Failure, Mode, Unregistered
from moray.controlplane.kubeenforcer.review import Container, Review
from moray.controlplane.kubeenforcer.verdicts import ImageVerdicts

MAX_WARNING = 256   # the API server may cut longer warnings


@dataclass(frozen=True, slots=True)
class Outcome:
    container: Container
    verdict: Verdict
    digest: str = ""
    reasons: tuple[str, ...] = ()   # the failed controls ("policy: reason"), or what is missing
    detail: str = ""                # why it is unresolved / unknown
    scan_queued: bool = False       # a scan was asked for on admission
    pinned: str = ""                # registry/repository@digest


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    decision: str                   # allow, deny, warn
    message: str
    warnings: tuple[str, ...]
    outcomes: tuple[Outcome, ...]
    excluded: str = ""              # why the request was not checked


def judge(found: ImageVerdicts, policies: Iterable[str]) -> tuple[Verdict, tuple[str, ...]]:
    """A digest's stored verdicts -> its verdict and reasons (the agents judge the pushed
    image-verdict list with the same function: moray.api.imageverdicts.judge)."""
    return judge_verdicts(found.verdicts, policies)


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def exclusion(review: Review, config: EnforcerConfig) -> str:
    """Why the request is excluded by configuration ('' if it is not)."""
    if review.namespace in config.excluded_namespaces:
        return f"namespace {review.namespace} is excluded"
    if _matches(review.labels, config.exclude_labels) or _matches(review.template_labels,
                                                                  config.exclude_labels):
        return "labels " + ",".join(f"{k}={v}" for k, v in sorted(config.exclude_labels.items()))
    return ""


def runs_images(review: Review) -> bool:
    """A request whose images are judged: a workload kind created or updated (a DELETE, a
    CONNECT, a kind without a pod spec is allowed as it is)."""
    return review.checked and review.operation in ("CREATE", "UPDATE")


def _what(o: Outcome) -> str:
    c = o.container
    where = {"container": "container", "init": "init container",
             "ephemeral": "ephemeral container"}[c.type]
    digest = f" ({o.digest})" if o.digest else ""
    return f"image {c.image}{digest} of {where} {c.name!r}"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_WARNING else text[:MAX_WARNING - 3] + "..."


def _register_hint(o: Outcome) -> str:
    ref = o.pinned or o.container.image
    return (f"register it for scanning (moray scan image add {ref} --policy FILE) or "
            f"scan it before deploying (moray-scan {ref} --policy FILE --record-verdict "
            "--server URL), then retry")


def decide(review: Review, outcomes: Iterable[Outcome], config: EnforcerConfig) -> Decision:
    outs = tuple(outcomes)
    problems: list[str] = []    # what enforce mode denies for
    warnings: list[str] = []
    for o in outs:
        if o.verdict is Verdict.NON_COMPLIANT:
            problems.append(f"{_what(o)} fails image assurance: {'; '.join(o.reasons)}")
        elif o.verdict is Verdict.UNREGISTERED:
            missing = f" ({'; '.join(o.reasons)})" if o.reasons else ""
            if o.scan_queued:
                text = (f"{_what(o)} has no assurance verdict{missing}: a scan was queued and "
                        f"did not finish within {config.scan_budget:g}s; retry shortly")
            else:
                text = f"{_what(o)} has no assurance verdict{missing}: {_register_hint(o)}"
            if config.unregistered is Unregistered.ALLOW:
                warnings.append(_cut(f"allowed (unregistered: allow): {_what(o)} has no "
                                     f"assurance verdict{missing}"))
            else:
                problems.append(text)
        elif o.verdict in (Verdict.UNRESOLVED, Verdict.UNKNOWN):
            what = ("cannot be resolved to a digest" if o.verdict is Verdict.UNRESOLVED
                    else "could not be checked")
            text = f"{_what(o)} {what}: {o.detail}"
            if config.failure is Failure.OPEN:
                warnings.append(_cut(f"allowed (failurePolicy: open): {text}"))
            else:
                problems.append(f"{text} (failurePolicy: closed)")
    if not problems:
        return Decision(True, "allow", "", tuple(warnings), outs)
    if config.mode is Mode.MONITOR:
        return Decision(True, "warn", "; ".join(problems),
                        tuple(_cut(f"would be denied: {p}") for p in problems) + tuple(warnings),
                        outs)
    return Decision(False, "deny", "; ".join(problems), tuple(warnings), outs)
