"""The columns of ``cp_event`` that the console filters on, taken from an event's payload
once, when it is stored (``ControlPlaneStore.insert_groups``), so a filtered page is an
index range scan and never reads payloads.

An event's payload is the agent's JSON (docs/events.md); an alert carries its triggering
event under ``event`` (docs/detections.md), and its container, process and parent are
that event's. Every value comes from an agent, so each is a string or nothing, cut to its
column's length and without NUL characters (PostgreSQL text refuses them): a hostile
payload can make a column wrong for its own events, never make a batch fail.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

# column lengths (controlplane/store/models.py, Event)
RULE_LEN = 253
PRIORITY_LEN = 16
CONTAINER_LEN = 253
CONTAINER_ID_LEN = 128
IMAGE_LEN = 512
NODE_LEN = 253
ACTION_LEN = 32
EXEC_ID_LEN = 64

# the events that start a process image (their exec_id is the ancestry's lookup key)
PROCESS_TYPES = frozenset({"exec", "fork"})


class EventColumns(NamedTuple):
    rule: str | None
    priority: str | None
    container: str | None       # the container's name
    container_id: str | None
    image: str | None
    node: str | None
    action: str | None          # an enforce event's action (blocked, killed, ...)
    exec_id: str | None         # exec and fork events only


NONE = EventColumns(None, None, None, None, None, None, None, None)


def _text(value: Any, size: int) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value.replace("\x00", "")[:size] or None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def event_columns(kind: str, payload: str | bytes) -> EventColumns:
    """The filter columns of one event of type ``kind``; all None for a payload that is
    not a JSON object."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return NONE
    return columns_of(kind, event) if isinstance(event, dict) else NONE


def columns_of(kind: str, event: dict[str, Any]) -> EventColumns:
    """``event_columns`` of a payload already parsed (the server's ingest parses each
    payload once, to check it, and takes the columns then)."""
    inner = _obj(event.get("event")) if kind == "alert" else event
    container = _obj(inner.get("container"))
    enforcement = _obj(event.get("enforcement"))
    rule = event.get("rule") if kind == "alert" else enforcement.get("rule")
    return EventColumns(
        rule=_text(rule, RULE_LEN),
        priority=_text(event.get("priority"), PRIORITY_LEN) if kind == "alert" else None,
        container=_text(container.get("name"), CONTAINER_LEN),
        container_id=_text(container.get("id"), CONTAINER_ID_LEN),
        image=_text(container.get("image"), IMAGE_LEN),
        node=_text(event.get("node") or inner.get("node"), NODE_LEN),
        action=_text(enforcement.get("action"), ACTION_LEN),
        exec_id=(_text(_obj(event.get("process")).get("exec_id"), EXEC_ID_LEN)
                 if kind in PROCESS_TYPES else None))


def process_of(event: dict[str, Any], kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(process, parent) objects of a stored event's payload (an alert's: its triggering
    event's); empty dicts where missing."""
    inner = _obj(event.get("event")) if kind == "alert" else event
    return _obj(inner.get("process")), _obj(inner.get("parent"))
