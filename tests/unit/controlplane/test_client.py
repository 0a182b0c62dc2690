"""ControlPlaneClient's event records: an event's JSON is encoded once (the pipeline's
line), spooled as bytes in a msgpack record and sent as the payload, with its id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from moray.agent.controlplane import ApplyResult, ControlPlaneClient, VerifiedPolicy
from moray.agent.controlplane.spool import EventSpool


def _line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)


def _lines(events: list[dict[str, Any]]) -> bytearray:
    """The router's hand-over: the events' JSON lines in one buffer."""
    return bytearray(b"".join(_line(e) for e in events))


def _ok(_policy: VerifiedPolicy) -> ApplyResult:
    return ApplyResult(ok=True)


def _old_payload(event: dict[str, Any], event_id: str) -> bytes:
    """What the sender put in payload_json before records carried the JSON."""
    return json.dumps({**event, "id": event_id}, default=str, separators=(",", ":")).encode()


def test_a_line_becomes_the_payload_with_its_id() -> None:
    plain = {"type": "open", "n": 1, "file": {"path": "/etc/é"}}
    named = {"type": "exec", "id": "e-7", "n": 2}
    records = ControlPlaneClient._records([plain, named], bytes(_lines([plain, named])))
    first, second = records
    assert set(first) == {"id", "t", "type", "json"} and first["type"] == "open"
    assert len(first["id"]) == 32                            # a new id, as before
    # the same object as before, the id last as {**event, "id": id} put it
    assert first["json"] == _line(plain)[:-2] + b',"id":"' + first["id"].encode() + b'"}'
    assert json.loads(first["json"]) == json.loads(_old_payload(plain, first["id"]))
    assert list(json.loads(first["json"])) == list(json.loads(_old_payload(plain, first["id"])))
    assert second["id"] == "e-7" and second["json"] == _line(named)[:-1]   # has its id


def test_events_handed_over_as_dicts_are_encoded_once_with_their_id() -> None:
    events: list[dict[str, Any]] = [{"type": "policy_rejected", "reason": "x"},
                                    {"type": "exec", "id": 5, "blob": b"\x00"},
                                    {"type": "exec", "id": None}]
    for event, rec in zip(events, ControlPlaneClient._records(events), strict=True):
        assert json.loads(rec["json"]) == json.loads(_old_payload(event, rec["id"]))
    # an id that is there but is not a non-empty string is replaced, never duplicated
    odd = {"type": "exec", "id": None, "n": 1}
    rec = ControlPlaneClient._records([odd], _line(odd))[0]
    assert rec["json"].count(b'"id"') == 1 and json.loads(rec["json"])["id"] == rec["id"]
    # lines that do not match the events (never from the router): encoded from the dicts
    two = [{"type": "open", "n": 1}, {"type": "open", "n": 2}]
    recs = ControlPlaneClient._records(two, _line(two[0]))
    assert [json.loads(r["json"]) for r in recs] == [{**e, "id": r["id"]}
                                                     for e, r in zip(two, recs, strict=True)]


def test_spooled_records_are_sent_as_they_were_encoded(tmp_path: Path) -> None:
    client = ControlPlaneClient("127.0.0.1:9", tmp_path, _ok)
    events = [{"type": "open", "n": i} for i in range(3)] + [{"type": "exec", "id": "x"}]
    client.submit(events, _lines(events))
    client.writer.close()                         # the writer thread wrote the batch
    records, _ = client.spool.read()
    sent = [ControlPlaneClient._to_proto(r) for r in records]
    assert [m.type for m in sent] == ["open"] * 3 + ["exec"]
    assert [json.loads(m.payload_json) for m in sent] == [
        {**e, "id": m.id} for e, m in zip(events, sent, strict=True)]
    assert sent[3].id == "x" and sent[3].payload_json == _line(events[3])[:-1]
    client.spool.close()


def test_records_spooled_by_the_previous_version_are_still_sent(tmp_path: Path) -> None:
    """An upgrade keeps the spool: a record {"id","t","type","event": dict} is sent with
    its event encoded as the previous sender encoded it."""
    event = {"type": "exec", "id": "old-1", "n": 1, "file": {"path": "/bin/é"}}
    spool = EventSpool(tmp_path / "spool")
    spool.append([{"id": "old-1", "t": 1234, "type": "exec", "event": event}])
    spool.close()
    client = ControlPlaneClient("127.0.0.1:9", tmp_path, _ok)
    client.submit([{"type": "open", "n": 2}], _lines([{"type": "open", "n": 2}]))
    client.writer.close()
    records, _ = client.spool.read()
    old, new = (ControlPlaneClient._to_proto(r) for r in records)
    assert (old.id, old.time_ms, old.type) == ("old-1", 1234, "exec")
    assert old.payload_json == _old_payload(event, "old-1")
    assert json.loads(old.payload_json) == event
    assert json.loads(new.payload_json) == {"type": "open", "n": 2, "id": new.id}
    client.spool.close()


def test_a_list_of_endpoints_enrols_and_fetches_the_ca_at_the_server(tmp_path: Path) -> None:
    """Gateways serve neither enrolment nor the CA: with a list, the defaults come from the
    first endpoint, and an explicit enrolment server also names the CA's host."""
    listed = ControlPlaneClient("gw1:7443, gw2:7443", tmp_path / "a", _ok)
    assert listed.servers == ["gw1:7443", "gw2:7443"] and listed.server == "gw1:7443"
    assert listed.enroll_server == "gw1:7444"
    behind = ControlPlaneClient("gw1:7443,gw2:7443", tmp_path / "b", _ok,
                                enroll_server="server:7444")
    assert behind.ca_url == "http://server:7080/ca.pem"
    for client in (listed, behind):
        client.writer.close()
        client.spool.close()


def test_the_heartbeat_status_names_the_agent_version(tmp_path: Path) -> None:
    """The console's agents page shows each agent's version: the client reports moray's
    own unless its status provider names one."""
    from moray import __version__

    plain = ControlPlaneClient("127.0.0.1:9", tmp_path / "a", _ok,
                               status=lambda: {"tiers": {"exec": "lsm-deny"}})
    named = ControlPlaneClient("127.0.0.1:9", tmp_path / "b", _ok,
                               status=lambda: {"agent_version": "9.9.9"})
    try:
        assert plain.status().agent_version == __version__
        assert dict(plain.status().tiers) == {"exec": "lsm-deny"}
        assert named.status().agent_version == "9.9.9"
    finally:
        for client in (plain, named):
            client.writer.close()
            client.spool.close()
