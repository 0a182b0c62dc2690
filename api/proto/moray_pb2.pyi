# ruff: noqa
# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplyStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPLY_STATUS_UNSPECIFIED: _ClassVar[ApplyStatus]
    APPLIED: _ClassVar[ApplyStatus]
    REJECTED_SIGNATURE: _ClassVar[ApplyStatus]
    REJECTED_REPLAY: _ClassVar[ApplyStatus]
    FAILED: _ClassVar[ApplyStatus]
    REMOVED: _ClassVar[ApplyStatus]
APPLY_STATUS_UNSPECIFIED: ApplyStatus
APPLIED: ApplyStatus
REJECTED_SIGNATURE: ApplyStatus
REJECTED_REPLAY: ApplyStatus
FAILED: ApplyStatus
REMOVED: ApplyStatus

class EnrollRequest(_message.Message):
    __slots__ = ("token", "csr_pem", "hostname", "labels", "kind")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr_pem: bytes
    hostname: str
    labels: _containers.ScalarMap[str, str]
    kind: str
    def __init__(self, token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., hostname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., kind: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("agent_id", "certificate_pem", "ca_pem", "policy_public_key", "policy_key_id", "labels", "tenant")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    POLICY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    POLICY_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    certificate_pem: bytes
    ca_pem: bytes
    policy_public_key: bytes
    policy_key_id: str
    labels: _containers.ScalarMap[str, str]
    tenant: str
    def __init__(self, agent_id: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., policy_public_key: _Optional[bytes] = ..., policy_key_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., tenant: _Optional[str] = ...) -> None: ...

class PolicyPayload(_message.Message):
    __slots__ = ("name", "tenant", "version", "document_json", "removed", "agent_id", "issued_at_ms", "sha256", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant: str
    version: int
    document_json: str
    removed: bool
    agent_id: str
    issued_at_ms: int
    sha256: str
    kind: str
    def __init__(self, name: _Optional[str] = ..., tenant: _Optional[str] = ..., version: _Optional[int] = ..., document_json: _Optional[str] = ..., removed: _Optional[bool] = ..., agent_id: _Optional[str] = ..., issued_at_ms: _Optional[int] = ..., sha256: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class SignedPolicy(_message.Message):
    __slots__ = ("payload", "signature", "key_id")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    key_id: str
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class PolicyStreamRequest(_message.Message):
    __slots__ = ("hello", "ack")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    hello: PolicyHello
    ack: PolicyAck
    def __init__(self, hello: _Optional[_Union[PolicyHello, _Mapping]] = ..., ack: _Optional[_Union[PolicyAck, _Mapping]] = ...) -> None: ...

class PolicyHello(_message.Message):
    __slots__ = ("versions", "sync_marker")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SYNC_MARKER_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.ScalarMap[str, int]
    sync_marker: bool
    def __init__(self, versions: _Optional[_Mapping[str, int]] = ..., sync_marker: _Optional[bool] = ...) -> None: ...

class RuleTier(_message.Message):
    __slots__ = ("rule", "tier")
    RULE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    rule: str
    tier: str
    def __init__(self, rule: _Optional[str] = ..., tier: _Optional[str] = ...) -> None: ...

class PolicyAck(_message.Message):
    __slots__ = ("name", "version", "status", "error", "tiers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    status: ApplyStatus
    error: str
    tiers: _containers.RepeatedCompositeFieldContainer[RuleTier]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., status: _Optional[_Union[ApplyStatus, str]] = ..., error: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[RuleTier, _Mapping]]] = ...) -> None: ...

class PolicyStreamResponse(_message.Message):
    __slots__ = ("policy", "synced")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SYNCED_FIELD_NUMBER: _ClassVar[int]
    policy: SignedPolicy
    synced: bool
    def __init__(self, policy: _Optional[_Union[SignedPolicy, _Mapping]] = ..., synced: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "time_ms", "type", "payload_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    time_ms: int
    type: str
    payload_json: bytes
    def __init__(self, id: _Optional[str] = ..., time_ms: _Optional[int] = ..., type: _Optional[str] = ..., payload_json: _Optional[bytes] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("batch_id", "events")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, batch_id: _Optional[int] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class EventAck(_message.Message):
    __slots__ = ("batch_id", "stored", "duplicates", "rejected")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    stored: int
    duplicates: int
    rejected: int
    def __init__(self, batch_id: _Optional[int] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("kernel", "agent_version", "features", "tiers", "policy_versions", "drops", "spool_bytes", "spool_records")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    class TiersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PolicyVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SPOOL_RECORDS_FIELD_NUMBER: _ClassVar[int]
    kernel: str
    agent_version: str
    features: _containers.ScalarMap[str, bool]
    tiers: _containers.ScalarMap[str, str]
    policy_versions: _containers.ScalarMap[str, int]
    drops: _containers.ScalarMap[str, int]
    spool_bytes: int
    spool_records: int
    def __init__(self, kernel: _Optional[str] = ..., agent_version: _Optional[str] = ..., features: _Optional[_Mapping[str, bool]] = ..., tiers: _Optional[_Mapping[str, str]] = ..., policy_versions: _Optional[_Mapping[str, int]] = ..., drops: _Optional[_Mapping[str, int]] = ..., spool_bytes: _Optional[int] = ..., spool_records: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: AgentStatus
    def __init__(self, status: _Optional[_Union[AgentStatus, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("server_time_ms",)
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    server_time_ms: int
    def __init__(self, server_time_ms: _Optional[int] = ...) -> None: ...

class GatewayPolicy(_message.Message):
    __slots__ = ("name", "version", "removed", "policy", "selector")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    removed: bool
    policy: SignedPolicy
    selector: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., removed: _Optional[bool] = ..., policy: _Optional[_Union[SignedPolicy, _Mapping]] = ..., selector: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GatewayPolicySet(_message.Message):
    __slots__ = ("tenant", "policies")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    policies: _containers.RepeatedCompositeFieldContainer[GatewayPolicy]
    def __init__(self, tenant: _Optional[str] = ..., policies: _Optional[_Iterable[_Union[GatewayPolicy, _Mapping]]] = ...) -> None: ...

class GatewayAgent(_message.Message):
    __slots__ = ("agent_id", "tenant", "labels", "refused", "error")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    tenant: str
    labels: _containers.ScalarMap[str, str]
    refused: bool
    error: str
    def __init__(self, agent_id: _Optional[str] = ..., tenant: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., refused: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class GatewayAttach(_message.Message):
    __slots__ = ("agent_id", "cert_sha256")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_SHA256_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    cert_sha256: str
    def __init__(self, agent_id: _Optional[str] = ..., cert_sha256: _Optional[str] = ...) -> None: ...

class GatewayRemoval(_message.Message):
    __slots__ = ("agent_id", "name", "version", "policy", "error")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    version: int
    policy: SignedPolicy
    error: str
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., policy: _Optional[_Union[SignedPolicy, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class GatewayPolicyAck(_message.Message):
    __slots__ = ("agent_id", "ack")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    ack: PolicyAck
    def __init__(self, agent_id: _Optional[str] = ..., ack: _Optional[_Union[PolicyAck, _Mapping]] = ...) -> None: ...

class GatewayPolicyAcks(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[GatewayPolicyAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[GatewayPolicyAck, _Mapping]]] = ...) -> None: ...

class GatewayHeartbeat(_message.Message):
    __slots__ = ("agent_id", "status")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    status: AgentStatus
    def __init__(self, agent_id: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, _Mapping]] = ...) -> None: ...

class GatewayUp(_message.Message):
    __slots__ = ("attach", "detach", "removal", "ack", "heartbeat", "acks")
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    REMOVAL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    attach: GatewayAttach
    detach: str
    removal: GatewayRemoval
    ack: GatewayPolicyAck
    heartbeat: GatewayHeartbeat
    acks: GatewayPolicyAcks
    def __init__(self, attach: _Optional[_Union[GatewayAttach, _Mapping]] = ..., detach: _Optional[str] = ..., removal: _Optional[_Union[GatewayRemoval, _Mapping]] = ..., ack: _Optional[_Union[GatewayPolicyAck, _Mapping]] = ..., heartbeat: _Optional[_Union[GatewayHeartbeat, _Mapping]] = ..., acks: _Optional[_Union[GatewayPolicyAcks, _Mapping]] = ...) -> None: ...

class GatewayDown(_message.Message):
    __slots__ = ("policies", "agent", "removal")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    REMOVAL_FIELD_NUMBER: _ClassVar[int]
    policies: GatewayPolicySet
    agent: GatewayAgent
    removal: GatewayRemoval
    def __init__(self, policies: _Optional[_Union[GatewayPolicySet, _Mapping]] = ..., agent: _Optional[_Union[GatewayAgent, _Mapping]] = ..., removal: _Optional[_Union[GatewayRemoval, _Mapping]] = ...) -> None: ...

class AgentEvents(_message.Message):
    __slots__ = ("agent_id", "cert_sha256", "events")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_SHA256_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    cert_sha256: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, agent_id: _Optional[str] = ..., cert_sha256: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class GatewayEventBatch(_message.Message):
    __slots__ = ("batch_id", "agents")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    agents: _containers.RepeatedCompositeFieldContainer[AgentEvents]
    def __init__(self, batch_id: _Optional[int] = ..., agents: _Optional[_Iterable[_Union[AgentEvents, _Mapping]]] = ...) -> None: ...
