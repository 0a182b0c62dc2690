from __future__ import annotations

from moray.api.proto import generate, moray_pb2


def test_generated_code_is_current() -> None:
    assert generate.stale() == [], "run: python -m moray.api.proto.generate"


def test_signed_policy_round_trip() -> None:
    payload = moray_pb2.PolicyPayload(name="p", tenant="default", version=3,
                                      document_json="{}", issued_at_ms=1)
    signed = moray_pb2.SignedPolicy(payload=payload.SerializeToString(), signature=b"s" * 64)
    back = moray_pb2.PolicyPayload.FromString(
        moray_pb2.SignedPolicy.FromString(signed.SerializeToString()).payload)
    assert back.version == 3 and back.name == "p"


def test_services_are_in_the_contract() -> None:
    services = moray_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"Enrollment", "AgentService", "GatewayService"}
    assert set(services["AgentService"].methods_by_name) == {"PolicyStream", "Events",
                                                              "Heartbeat"}
    assert set(services["GatewayService"].methods_by_name) == {"Link", "Events"}
