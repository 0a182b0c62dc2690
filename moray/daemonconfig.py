"""``--config FILE`` of the long-running commands (``moray agent run``, ``moray server``,
``moray gateway run``): a YAML mapping whose keys are the command's long options.

The schema *is* the command line (docs/install.md "Configuration files"): a key is a long
option without its dashes (``metrics-port``; ``metrics_port`` is accepted too), a flag
takes ``true``/``false``, a repeatable option a list, every other option a scalar. An
unknown key, or a value of the wrong shape, stops the command with the file's name and
the key, before anything starts. The file's values become the options' defaults, so a
flag given on the command line wins (for a repeatable option it adds to the file's list).
``config`` itself is not a key. The packaged units read /etc/moray/agent.yaml,
/etc/moray/server.yaml and /etc/moray/gateway.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from moray.errors import ConfigError


def add_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML file of this command's long options (docs/install.md); "
                        "flags on the command line win")
    p.set_defaults(config_parser=p)


def _value(path: str, key: str, action: argparse.Action, value: Any) -> Any:
    def scalar(v: Any) -> Any:
        if isinstance(v, bool | dict | list) or v is None:
            raise ConfigError(f"{path}: {key}: wants a single value, got {v!r}")
        return action.type(str(v)) if callable(action.type) else str(v)

    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {key}: wants true or false, got {value!r}")
        return value if action.const is True else not value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [scalar(v) for v in items]
    return scalar(value)


def defaults(path: str, p: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's settings as ``{dest: value}`` for ``p.set_defaults``."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not YAML: {err}") from err
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: wants a mapping of option: value")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        option = "--" + str(key).replace("_", "-")
        action = p._option_string_actions.get(option)
        if action is None or option in ("--config", "--help"):
            raise ConfigError(f"{path}: {key}: not an option of {p.prog} (see --help)")
        try:
            out[action.dest] = _value(path, str(key), action, value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{path}: {key}: {err}") from err
    return out
