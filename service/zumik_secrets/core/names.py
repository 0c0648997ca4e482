"""Resource names and identifier grammar.

Grammar (this module owns it):

- tenant id, project id: ``^[a-z0-9][a-z0-9-]{0,62}$``
- handles: ``<kind>_<22 base62>`` (see :mod:`zumik_secrets.core.handles`)
- scopes: ``^[a-z][a-z0-9_.:-]{0,63}$``
- names::

    tenants/{tenant}
    tenants/{tenant}/projects/{project}
    tenants/{tenant}/projects/{project}/apiKeys/key_{id}
    tenants/{tenant}/projects/{project}/sessions/ses_{id}
    tenants/{tenant}/projects/{project}/secrets/sec_{id}
    tenants/{tenant}/handles/{kind}_{id}
    tenants/{tenant}/purgeReceipts/rcp_{id}
    tenants/{tenant}/settings

:func:`parse_resource` recognises any of them (and ``tenants/-``, ``tenants/-/settings``: every
tenant, for privileged identities); the interceptor parses each request's resource with it once
and hands the typed name to the servicer.

Every parser raises ``InvalidArgument`` with reason ``INVALID_NAME`` (``INVALID_SCOPE`` for
scopes), metadata ``{"field": field}`` and one field violation; the message states the expected
pattern and never echoes the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

from zumik_secrets.core import handles
from zumik_secrets.core.errors import FieldViolation, InvalidArgument

REASON_INVALID_NAME = "INVALID_NAME"
REASON_INVALID_SCOPE = "INVALID_SCOPE"

MAX_NAME_LENGTH = 256
"""Longer inputs are rejected before any regex work (the longest valid name is ~190)."""

ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
SCOPE_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
_ID = r"[a-z0-9][a-z0-9-]{0,62}"
_BODY = r"[0-9A-Za-z]{22}"

TENANT_PATTERN = "tenants/{tenant}"
PROJECT_PATTERN = "tenants/{tenant}/projects/{project}"
API_KEY_PATTERN = "tenants/{tenant}/projects/{project}/apiKeys/key_{id}"
SESSION_PATTERN = "tenants/{tenant}/projects/{project}/sessions/ses_{id}"
SECRET_PATTERN = "tenants/{tenant}/projects/{project}/secrets/sec_{id}"  # noqa: S105
HANDLE_PATTERN = "tenants/{tenant}/handles/{kind}_{id}"
PURGE_RECEIPT_PATTERN = "tenants/{tenant}/purgeReceipts/rcp_{id}"
GRANT_PATTERN = "tenants/{tenant}/breakGlassGrants/bg_{id}"
SETTINGS_PATTERN = "tenants/{tenant}/settings"

ANY_TENANT = "-"
"""The tenant segment of ``tenants/-`` and ``tenants/-/settings``: every tenant."""

_TENANT_RE = re.compile(rf"tenants/({_ID})")
_PROJECT_RE = re.compile(rf"tenants/({_ID})/projects/({_ID})")
_API_KEY_RE = re.compile(rf"tenants/({_ID})/projects/({_ID})/apiKeys/(key_{_BODY})")
_SESSION_RE = re.compile(rf"tenants/({_ID})/projects/({_ID})/sessions/(ses_{_BODY})")
_SECRET_RE = re.compile(rf"tenants/({_ID})/projects/({_ID})/secrets/(sec_{_BODY})")
_HANDLE_RE = re.compile(rf"tenants/({_ID})/handles/([a-z]{{2,8}}_{_BODY})")
_PURGE_RECEIPT_RE = re.compile(rf"tenants/({_ID})/purgeReceipts/(rcp_{_BODY})")
_GRANT_RE = re.compile(rf"tenants/({_ID})/breakGlassGrants/(bg_{_BODY})")


def _bad(field: str, message: str, reason: str = REASON_INVALID_NAME) -> InvalidArgument:
    return InvalidArgument(
        message,
        reason=reason,
        metadata={"field": field},
        violations=[FieldViolation(field, message)],
    )


def validate_tenant_id(value: str, *, field: str = "tenant_id") -> str:
    """Return ``value`` if it is a valid tenant id.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    if not isinstance(value, str) or len(value) > 63 or ID_RE.fullmatch(value) is None:
        raise _bad(field, f"{field} must match ^[a-z0-9][a-z0-9-]{{0,62}}$")
    return value


def validate_project_id(value: str, *, field: str = "project_id") -> str:
    """Return ``value`` if it is a valid project id.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    return validate_tenant_id(value, field=field)


def validate_scope(value: str, *, field: str = "scope") -> str:
    """Return ``value`` if it is a valid scope.

    Raises:
        InvalidArgument: Reason ``INVALID_SCOPE``.
    """
    if not isinstance(value, str) or len(value) > 64 or SCOPE_RE.fullmatch(value) is None:
        raise _bad(field, f"{field} must match ^[a-z][a-z0-9_.:-]{{0,63}}$", REASON_INVALID_SCOPE)
    return value


def _validate_handle(value: str, kind: str | None, field: str, pattern: str) -> str:
    try:
        handles.parse_handle(value, kind, field=field)
    except InvalidArgument as error:
        too_large = error.message.endswith(handles.ID_TOO_LARGE)
        message = f"{field} must look like {pattern}"
        raise _bad(field, f"{message}: {handles.ID_TOO_LARGE}" if too_large else message) from None
    return value


def _match(regex: re.Pattern[str], text: str, field: str, pattern: str) -> re.Match[str]:
    m = regex.fullmatch(text) if isinstance(text, str) and len(text) <= MAX_NAME_LENGTH else None
    if m is None:
        raise _bad(field, f"{field} must look like {pattern}")
    return m


@dataclass(frozen=True, slots=True)
class TenantName:
    """``tenants/{tenant}``."""

    tenant: str

    def __post_init__(self) -> None:
        if self.tenant != ANY_TENANT:
            validate_tenant_id(self.tenant, field="tenant")

    def __str__(self) -> str:
        return f"tenants/{self.tenant}"


@dataclass(frozen=True, slots=True)
class SettingsName:
    """``tenants/{tenant}/settings`` (``tenants/-/settings``: every tenant)."""

    tenant: str

    def __post_init__(self) -> None:
        if self.tenant != ANY_TENANT:
            validate_tenant_id(self.tenant, field="tenant")

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/settings"


@dataclass(frozen=True, slots=True)
class ProjectName:
    """``tenants/{tenant}/projects/{project}``."""

    tenant: str
    project: str

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant, field="tenant")
        validate_project_id(self.project, field="project")

    @property
    def parent(self) -> TenantName:
        """The tenant this project belongs to."""
        return TenantName(self.tenant)

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}"


@dataclass(frozen=True, slots=True)
class ApiKeyName:
    """``tenants/{tenant}/projects/{project}/apiKeys/key_{id}``; ``id`` is the full handle."""

    tenant: str
    project: str
    id: str

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant, field="tenant")
        validate_project_id(self.project, field="project")
        _validate_handle(self.id, handles.KIND_API_KEY, "id", "key_{id}")

    @property
    def parent(self) -> ProjectName:
        """The project this key belongs to."""
        return ProjectName(self.tenant, self.project)

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}/apiKeys/{self.id}"


@dataclass(frozen=True, slots=True)
class SessionName:
    """``tenants/{tenant}/projects/{project}/sessions/ses_{id}``; ``id`` is the full handle."""

    tenant: str
    project: str
    id: str

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant, field="tenant")
        validate_project_id(self.project, field="project")
        _validate_handle(self.id, handles.KIND_SESSION, "id", "ses_{id}")

    @property
    def parent(self) -> ProjectName:
        """The project this session belongs to."""
        return ProjectName(self.tenant, self.project)

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}/sessions/{self.id}"


@dataclass(frozen=True, slots=True)
class SecretName:
    """``tenants/{tenant}/projects/{project}/secrets/sec_{id}``; ``id`` is the full handle."""

    tenant: str
    project: str
    id: str

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant, field="tenant")
        validate_project_id(self.project, field="project")
        _validate_handle(self.id, handles.KIND_SECRET, "id", "sec_{id}")

    @property
    def parent(self) -> ProjectName:
        """The project this secret belongs to."""
        return ProjectName(self.tenant, self.project)

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}/secrets/{self.id}"


@dataclass(frozen=True, slots=True)
class HandleName:
    """``tenants/{tenant}/handles/{kind}_{id}``; ``id`` is the full handle."""

    tenant: str
    id: str

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant, field="tenant")
        _validate_handle(self.id, None, "id", "{kind}_{id}")

    @property
    def kind(self) -> str:
        """The handle's kind (the part before ``_``)."""
        return self.id.split("_", 1)[0]

    @property
    def parent(self) -> TenantName:
        """The tenant this handle belongs to."""
        return TenantName(self.tenant)

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/handles/{self.id}"


@dataclass(frozen=True, slots=True)
class PurgeReceiptName:
    """``tenants/{tenant}/purgeReceipts/rcp_{id}``; ``id`` is the full handle."""

    tenant: str
    id: str

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant, field="tenant")
        _validate_handle(self.id, handles.KIND_PURGE_RECEIPT, "id", "rcp_{id}")

    @property
    def parent(self) -> TenantName:
        """The tenant this receipt belongs to."""
        return TenantName(self.tenant)

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/purgeReceipts/{self.id}"


@dataclass(frozen=True, slots=True)
class GrantName:
    """``tenants/{tenant}/breakGlassGrants/bg_{id}``; ``id`` is the full grant id."""

    tenant: str
    id: str

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant, field="tenant")
        if _GRANT_ID_FULL(self.id) is None:
            raise _bad("id", "id must look like bg_{id}")

    @property
    def parent(self) -> TenantName:
        """The tenant this grant covers."""
        return TenantName(self.tenant)

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/breakGlassGrants/{self.id}"


def _reraise_as(field: str, pattern: str) -> InvalidArgument:
    # A component passed the regex but failed a deeper check (a handle body over 128 bits):
    # report it against the caller's field and the whole pattern, saying why.
    return _bad(field, f"{field} must look like {pattern}: {handles.ID_TOO_LARGE}")


def parse_tenant_name(text: str, *, field: str = "name") -> TenantName:
    """Parse ``tenants/{tenant}``.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    m = _match(_TENANT_RE, text, field, TENANT_PATTERN)
    return TenantName(m.group(1))


def parse_project_name(text: str, *, field: str = "name") -> ProjectName:
    """Parse ``tenants/{tenant}/projects/{project}``.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    m = _match(_PROJECT_RE, text, field, PROJECT_PATTERN)
    return ProjectName(m.group(1), m.group(2))


def parse_api_key_name(text: str, *, field: str = "name") -> ApiKeyName:
    """Parse ``tenants/{tenant}/projects/{project}/apiKeys/key_{id}``.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    m = _match(_API_KEY_RE, text, field, API_KEY_PATTERN)
    try:
        return ApiKeyName(m.group(1), m.group(2), m.group(3))
    except InvalidArgument:
        raise _reraise_as(field, API_KEY_PATTERN) from None


def parse_session_name(text: str, *, field: str = "name") -> SessionName:
    """Parse ``tenants/{tenant}/projects/{project}/sessions/ses_{id}``.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    m = _match(_SESSION_RE, text, field, SESSION_PATTERN)
    try:
        return SessionName(m.group(1), m.group(2), m.group(3))
    except InvalidArgument:
        raise _reraise_as(field, SESSION_PATTERN) from None


def parse_secret_name(text: str, *, field: str = "name") -> SecretName:
    """Parse ``tenants/{tenant}/projects/{project}/secrets/sec_{id}``.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    m = _match(_SECRET_RE, text, field, SECRET_PATTERN)
    try:
        return SecretName(m.group(1), m.group(2), m.group(3))
    except InvalidArgument:
        raise _reraise_as(field, SECRET_PATTERN) from None


def parse_handle_name(text: str, *, field: str = "name") -> HandleName:
    """Parse ``tenants/{tenant}/handles/{kind}_{id}``.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    m = _match(_HANDLE_RE, text, field, HANDLE_PATTERN)
    try:
        return HandleName(m.group(1), m.group(2))
    except InvalidArgument:
        raise _reraise_as(field, HANDLE_PATTERN) from None


def parse_purge_receipt_name(text: str, *, field: str = "name") -> PurgeReceiptName:
    """Parse ``tenants/{tenant}/purgeReceipts/rcp_{id}``.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    m = _match(_PURGE_RECEIPT_RE, text, field, PURGE_RECEIPT_PATTERN)
    try:
        return PurgeReceiptName(m.group(1), m.group(2))
    except InvalidArgument:
        raise _reraise_as(field, PURGE_RECEIPT_PATTERN) from None


def parse_grant_name(text: str, *, field: str = "name") -> GrantName:
    """Parse ``tenants/{tenant}/breakGlassGrants/bg_{id}``.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    m = _match(_GRANT_RE, text, field, GRANT_PATTERN)
    try:
        return GrantName(m.group(1), m.group(2))
    except InvalidArgument:
        raise _reraise_as(field, GRANT_PATTERN) from None


ResourceName = (
    TenantName
    | SettingsName
    | ProjectName
    | ApiKeyName
    | SessionName
    | SecretName
    | HandleName
    | PurgeReceiptName
    | GrantName
)
"""Any resource name of the API."""

_PATTERNS: dict[type[object], str] = {
    TenantName: TENANT_PATTERN,
    SettingsName: SETTINGS_PATTERN,
    ProjectName: PROJECT_PATTERN,
    ApiKeyName: API_KEY_PATTERN,
    SessionName: SESSION_PATTERN,
    SecretName: SECRET_PATTERN,
    HandleName: HANDLE_PATTERN,
    PurgeReceiptName: PURGE_RECEIPT_PATTERN,
    GrantName: GRANT_PATTERN,
}

_Name = TypeVar("_Name", bound=ResourceName)


def parse_resource(text: str, *, field: str = "name") -> ResourceName:
    """Parse any resource name (the interceptor's one parse per call).

    The tenant segment may be ``-`` (every tenant) only in ``tenants/-`` and
    ``tenants/-/settings``; whether the caller may use it is the authorizer's decision.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``.
    """
    if not isinstance(text, str) or len(text) > MAX_NAME_LENGTH:
        raise _bad(
            field, f"{field} must be a resource name of at most {MAX_NAME_LENGTH} characters"
        )
    parts = text.split("/")
    if len(parts) < 2 or parts[0] != "tenants":
        raise _bad(field, f"{field} must start with tenants/{{tenant}}")
    if parts[1] == ANY_TENANT and len(parts) in (2, 3):
        if len(parts) == 2:
            return TenantName(ANY_TENANT)
        if parts[2] == "settings":
            return SettingsName(ANY_TENANT)
    if len(parts) == 2:
        return parse_tenant_name(text, field=field)
    if len(parts) == 3 and parts[2] == "settings":
        return SettingsName(parse_tenant_name(f"tenants/{parts[1]}", field=field).tenant)
    if len(parts) == 3 and parts[2] != "settings":
        raise _bad(field, f"{field} must be a resource name (tenants/{{tenant}}/...)")
    if parts[2] == "projects":
        if len(parts) == 4:
            return parse_project_name(text, field=field)
        if len(parts) == 6 and parts[4] == "apiKeys":
            return parse_api_key_name(text, field=field)
        if len(parts) == 6 and parts[4] == "sessions":
            return parse_session_name(text, field=field)
        if len(parts) == 6 and parts[4] == "secrets":
            return parse_secret_name(text, field=field)
    if len(parts) == 4 and parts[2] == "handles":
        return parse_handle_name(text, field=field)
    if len(parts) == 4 and parts[2] == "purgeReceipts":
        return parse_purge_receipt_name(text, field=field)
    if len(parts) == 4 and parts[2] == "breakGlassGrants":
        return parse_grant_name(text, field=field)
    raise _bad(field, f"{field} must be a resource name (tenants/{{tenant}}/...)")


def expect(name: ResourceName, kind: type[_Name], *, field: str = "name") -> _Name:
    """``name`` if it is a ``kind``; the servicer's check of what the interceptor parsed.

    Raises:
        InvalidArgument: Reason ``INVALID_NAME``, stating the expected pattern.
    """
    if not isinstance(name, kind):
        raise _bad(field, f"{field} must look like {_PATTERNS[kind]}")
    return name


def name_project(name: ResourceName) -> str | None:
    """The project a name belongs to, or None for a tenant-level name."""
    return getattr(name, "project", None)


_ID_FULL = ID_RE.fullmatch
_HANDLE_FULL = re.compile(rf"[a-z]{{2,8}}_{_BODY}").fullmatch
_KIND_HANDLE = {
    "apiKeys": re.compile(rf"key_{_BODY}").fullmatch,
    "sessions": re.compile(rf"ses_{_BODY}").fullmatch,
    "secrets": re.compile(rf"sec_{_BODY}").fullmatch,
}
_RECEIPT_FULL = re.compile(rf"rcp_{_BODY}").fullmatch
_GRANT_FULL = _GRANT_ID_FULL = re.compile(rf"bg_{_BODY}").fullmatch


def is_resource_name(text: str) -> bool:
    """Whether ``text`` is a whole resource name of this grammar (or ``tenants/{t}/settings``).

    Such names are built or validated by the service: identifiers chosen under the grammar, not
    free text. Audit events, logs and errors record them as they are (a UUID- or hex-shaped
    tenant id must not turn an event's target into ``[REDACTED]``); only free text goes through
    the secret detector. A grammar-valid name cannot hold an uppercase letter, ``_``, ``+``,
    ``/`` or ``=`` inside an id, so no base64/base64url/base62 token, JWS, API key, session
    token or PEM block fits one; the longest lowercase-hex run it can hold is one id (63).
    """
    if not isinstance(text, str) or len(text) > MAX_NAME_LENGTH or not text.startswith("tenants/"):
        return False
    # Dispatch on the shape (one small regex per part): this runs for every audit target and
    # every long request string, so it must cost far less than the detector it spares.
    parts = text.split("/")
    count = len(parts)
    if count < 2 or _ID_FULL(parts[1]) is None:
        return False
    if count == 2:
        return True
    if count == 3:
        return parts[2] == "settings"
    if count == 4:
        collection, last = parts[2], parts[3]
        if collection == "projects":
            return _ID_FULL(last) is not None
        if collection == "handles":
            return _HANDLE_FULL(last) is not None
        if collection == "purgeReceipts":
            return _RECEIPT_FULL(last) is not None
        if collection == "breakGlassGrants":
            return _GRANT_FULL(last) is not None
        return False
    if count == 6 and parts[2] == "projects" and _ID_FULL(parts[3]) is not None:
        check = _KIND_HANDLE.get(parts[4])
        return check is not None and check(parts[5]) is not None
    return False
