"""moray.errors: one root. Every exception class of agent, controlplane and api derives from
MorayError through a kind; the policy loader's and the detection loader's errors share one
Problem record."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import moray
from moray.api.policy import load
from moray.controlplane.server import policydoc
from moray.errors import MorayError, Problem, ScanError, ValidationError

PACKAGES = ("moray.agent", "moray.controlplane", "moray.api")


def _exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name.endswith("__main__") or ".migrations." in info.name:
                continue
            module = importlib.import_module(info.name)
            found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                      if issubclass(c, BaseException) and c.__module__ == module.__name__]
    return found


def test_every_exception_has_the_root() -> None:
    classes = _exception_classes()
    assert len(classes) >= 30
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes
                     if not issubclass(c, MorayError))
    assert outside == []


def test_kinds_keep_their_builtin_bases() -> None:
    by_name = {c.__name__: c for c in _exception_classes()}
    for name, builtin in (("RuleError", ValueError), ("CompileError", ValueError),
                          ("NetnsError", OSError), ("LibbpfMissingError", OSError),
                          ("BtfError", LookupError), ("BDBError", ValueError)):
        assert issubclass(by_name[name], builtin), name
    assert issubclass(by_name["RuleError"], ValidationError)
    assert issubclass(by_name["ScanPolicyError"], ScanError)


def test_one_problem_record() -> None:
    with pytest.raises(load.PolicyError) as err:
        load.load_text("apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {name: x}\n",
                       "x.yaml")
    assert isinstance(err.value, ValidationError) and isinstance(err.value, ValueError)
    problem = err.value.problems[0]
    assert type(problem) is Problem and problem.where == problem.field
    assert str(err.value).startswith("x.yaml:")


def test_three_policy_errors_have_distinct_names() -> None:
    assert load.PolicyError is load.PolicyValidationError
    assert policydoc.PolicyError is policydoc.PolicyDocError
    assert load.PolicyValidationError is not policydoc.PolicyDocError
    assert moray.__name__ == "moray"
