from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_IMPORTED: _ClassVar[Outcome]
    OUTCOME_REJECTED: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_IMPORTED: Outcome
OUTCOME_REJECTED: Outcome

class Endpoint(_message.Message):
    __slots__ = ("kind", "url")
    KIND_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    url: str
    def __init__(self, kind: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class Organisation(_message.Message):
    __slots__ = ("org_id", "name", "level", "endpoints", "encryption_certificate", "signing_certificate", "cert_fingerprints", "revoked", "online")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CERT_FINGERPRINTS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    name: str
    level: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    encryption_certificate: bytes
    signing_certificate: bytes
    cert_fingerprints: _containers.RepeatedScalarFieldContainer[str]
    revoked: bool
    online: bool
    def __init__(self, org_id: _Optional[str] = ..., name: _Optional[str] = ..., level: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., encryption_certificate: _Optional[bytes] = ..., signing_certificate: _Optional[bytes] = ..., cert_fingerprints: _Optional[_Iterable[str]] = ..., revoked: _Optional[bool] = ..., online: _Optional[bool] = ...) -> None: ...

class ListOrganisationsRequest(_message.Message):
    __slots__ = ("level",)
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: str
    def __init__(self, level: _Optional[str] = ...) -> None: ...

class ListOrganisationsResponse(_message.Message):
    __slots__ = ("organisations",)
    ORGANISATIONS_FIELD_NUMBER: _ClassVar[int]
    organisations: _containers.RepeatedCompositeFieldContainer[Organisation]
    def __init__(self, organisations: _Optional[_Iterable[_Union[Organisation, _Mapping]]] = ...) -> None: ...

class GetOrganisationRequest(_message.Message):
    __slots__ = ("org_id",)
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    def __init__(self, org_id: _Optional[str] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("patient_pseudonyms", "replace")
    PATIENT_PSEUDONYMS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    patient_pseudonyms: _containers.RepeatedScalarFieldContainer[str]
    replace: bool
    def __init__(self, patient_pseudonyms: _Optional[_Iterable[str]] = ..., replace: _Optional[bool] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("published", "total_held")
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_HELD_FIELD_NUMBER: _ClassVar[int]
    published: int
    total_held: int
    def __init__(self, published: _Optional[int] = ..., total_held: _Optional[int] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("patient_pseudonym", "lookup_id")
    PATIENT_PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_ID_FIELD_NUMBER: _ClassVar[int]
    patient_pseudonym: str
    lookup_id: str
    def __init__(self, patient_pseudonym: _Optional[str] = ..., lookup_id: _Optional[str] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("holders",)
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    holders: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, holders: _Optional[_Iterable[str]] = ...) -> None: ...

class EnvelopeHeader(_message.Message):
    __slots__ = ("envelope_id", "kind", "sender", "recipient", "patient_pseudonym", "created_at", "expires_at")
    ENVELOPE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    PATIENT_PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    envelope_id: str
    kind: str
    sender: str
    recipient: str
    patient_pseudonym: str
    created_at: int
    expires_at: int
    def __init__(self, envelope_id: _Optional[str] = ..., kind: _Optional[str] = ..., sender: _Optional[str] = ..., recipient: _Optional[str] = ..., patient_pseudonym: _Optional[str] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("header", "sealed", "delivery_attempt")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    header: EnvelopeHeader
    sealed: bytes
    delivery_attempt: int
    def __init__(self, header: _Optional[_Union[EnvelopeHeader, _Mapping]] = ..., sealed: _Optional[bytes] = ..., delivery_attempt: _Optional[int] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("envelope_id", "duplicate")
    ENVELOPE_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    envelope_id: str
    duplicate: bool
    def __init__(self, envelope_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class InboxRequest(_message.Message):
    __slots__ = ("max_batch", "follow")
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    max_batch: int
    follow: bool
    def __init__(self, max_batch: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class AcknowledgeRequest(_message.Message):
    __slots__ = ("envelope_id", "outcome", "detail")
    ENVELOPE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    envelope_id: str
    outcome: Outcome
    detail: str
    def __init__(self, envelope_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class AcknowledgeResponse(_message.Message):
    __slots__ = ("envelope_id", "state")
    ENVELOPE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    envelope_id: str
    state: str
    def __init__(self, envelope_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("envelope_id",)
    ENVELOPE_ID_FIELD_NUMBER: _ClassVar[int]
    envelope_id: str
    def __init__(self, envelope_id: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("envelope_id", "state", "reason", "attempts", "accepted_at", "updated_at", "sender", "recipient", "kind")
    ENVELOPE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    envelope_id: str
    state: str
    reason: str
    attempts: int
    accepted_at: int
    updated_at: int
    sender: str
    recipient: str
    kind: str
    def __init__(self, envelope_id: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., attempts: _Optional[int] = ..., accepted_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., sender: _Optional[str] = ..., recipient: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...
