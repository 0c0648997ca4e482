"""Sealed secrets: seal, open (audited, fail closed), metadata, update, delete, rotation.

Plaintext handling: it arrives as ``bytes`` in the request, is sealed at once and the reference
dropped; Open decrypts into a local ``bytes`` that is handed to the caller only after the durable
``secret.open`` audit event is stored, and is never logged, traced or cached. Every open failure
is reported by reason, never with ciphertext or plaintext:

- ``NOT_FOUND`` (missing or another tenant's, indistinguishable);
- ``DATA_KEY_DESTROYED`` (the version that sealed it was crypto-shredded);
- ``DECRYPTION_FAILED`` (the stored ciphertext does not authenticate where it is: it was altered,
  or moved to another row, project or tenant);
- ``CUSTOMER_KEY_UNAVAILABLE`` / ``CUSTOMER_KEY_UNREACHABLE`` (the tenant's own key);
- ``AUDIT_UNAVAILABLE`` (the audit event could not be made durable: nothing is returned).

Open's row cache (off unless :meth:`SealedSecrets.enable_row_cache`; the server turns it on,
``ZUMIK_OPEN_CACHE_ENTRIES``): the sealed row (ciphertext and versions, never plaintext) of a
recently opened secret, at most ``entries`` rows, each kept at most :data:`ROW_TTL_S`. The row
is still decrypted, checked against its data key (a destroyed version still fails) and the
durable ``secret.open`` event still written on every Open. A delete, update, rewrap or key
destruction made here drops the rows at once; any replica's delete, update or rewrap
(``sealed_secret`` changes), purge (tenant or project) and data-key change drop them through
the change feed (:meth:`SealedSecrets.on_change`). The bound is therefore the change feed's:
a secret deleted or replaced on another replica is opened from the old row at most one feed
propagation after that replica answered (``poll_interval`` plus one feed read; milliseconds
with PostgreSQL's NOTIFY), the same bound as a revoked key or claim. If the feed has not been
read for longer than the server's freshness bound (``fresh``: twice the poll interval plus a
second), the cache is emptied and bypassed until the watcher reads the feed again, so a feed
outage cannot stretch the bound to the TTL. The TTL only bounds how long an unchanged row is
kept.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditRecorder, audited_change, event, record
from zumik_secrets.app.data_keys import DataKeys, data_key_destroyed
from zumik_secrets.app.ttl_cache import TtlLru
from zumik_secrets.core import page_tokens, sealing
from zumik_secrets.core.errors import (
    DecryptionFailed,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Unavailable,
    ZumikError,
    resource_not_found,
)
from zumik_secrets.core.handles import KIND_SECRET, new_handle
from zumik_secrets.core.names import ProjectName, SecretName
from zumik_secrets.storage.ports import SealedSecretStore
from zumik_secrets.storage.records import ChangeRecord, DataKeyRecord, SealedSecretRecord

_LOG = logging.getLogger("zumik.secrets")

PURPOSE = sealing.PURPOSE_SEAL
DEFAULT_MAX_PLAINTEXT = 64 * 1024
MAX_DISPLAY_NAME = 128
MAX_METADATA_ENTRIES = 16
MAX_METADATA_VALUE = 256
METADATA_KEY_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
DEFAULT_BATCH = 100
MAX_BATCH = 1000

ROW_TTL_S = 300.0
"""Longest time Open's row cache keeps an unchanged row, seconds (changes drop it through the
change feed, see the module docstring)."""

REASON_DECRYPTION_FAILED = "DECRYPTION_FAILED"
REASON_INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"  # noqa: S105 (a reason code)
_TOKEN_VERSION = 1


def _now() -> datetime:
    return datetime.now(UTC)


def _bad(field: str, problem: str, reason: str = "INVALID_ARGUMENT") -> InvalidArgument:
    return InvalidArgument(
        f"{field} {problem}",
        reason=reason,
        metadata={"field": field},
        violations=[FieldViolation(field, problem)],
    )


def decryption_failed(name: str) -> FailedPrecondition:
    """The answer when a stored ciphertext does not authenticate where it is."""
    return FailedPrecondition(
        "the stored ciphertext of this secret does not authenticate (it was altered or moved "
        "to another row, project or tenant); it cannot be opened",
        reason=REASON_DECRYPTION_FAILED,
        metadata={"resource": name},
    )


@dataclass(frozen=True, slots=True)
class RewrapResult:
    """Progress of one RewrapSecrets batch."""

    rewrapped: int
    remaining: int
    next_page_token: str
    target_version: int


@dataclass(frozen=True, slots=True)
class DestroyResult:
    """A destroyed data-key version and what only it protected."""

    data_key: DataKeyRecord
    unrecoverable_secrets: int


def page_size(value: int, default: int, maximum: int, field: str = "page_size") -> int:
    """A request's page size: the default for 0, capped at ``maximum``.

    Raises:
        InvalidArgument: negative.
    """
    if value < 0:
        raise _bad(field, "must not be negative")
    return min(value or default, maximum)


class SealedSecrets:
    """The SealService use cases."""

    def __init__(
        self,
        store: SealedSecretStore,
        data_keys: DataKeys,
        audit: AuditRecorder,
        *,
        max_plaintext_bytes: int = DEFAULT_MAX_PLAINTEXT,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Create the service.

        Args:
            store: Sealed-secret rows.
            data_keys: The (tenant, project) seal keys.
            audit: Where Open and lifecycle events go.
            max_plaintext_bytes: Largest plaintext accepted.
            clock: Current time.
        """
        self._store = store
        self._data_keys = data_keys
        self._audit = audit
        self._max_plaintext = max_plaintext_bytes
        self._clock = clock
        self._rows: TtlLru[tuple[str, str, str], SealedSecretRecord] | None = None
        self._rows_lock = threading.Lock()
        self._rows_generation = 0
        self._rows_fresh: Callable[[], bool] = lambda: True

    # -- Open's row cache (see the module docstring) ---------------------------------------------

    def enable_row_cache(
        self, entries: int, fresh: Callable[[], bool], ttl: float = ROW_TTL_S
    ) -> None:
        """Keep up to ``entries`` sealed rows for Open, each at most ``ttl`` seconds;
        ``entries`` 0 keeps none. ``fresh``: whether the change feed has been read recently
        enough to trust the cache (False: it is emptied and bypassed, see the module doc)."""
        self._rows = TtlLru(entries, ttl) if entries > 0 else None
        self._rows_fresh = fresh

    def row_cache_stats(self) -> tuple[int, int, int]:
        """Open's row cache: hits, misses, rows held (zeros when off; read by the metrics)."""
        rows = self._rows
        return (0, 0, 0) if rows is None else (rows.hits, rows.misses, len(rows))

    def forget_rows(
        self, tenant: str, project: str | None = None, secret_id: str | None = None
    ) -> None:
        """Drop the cached rows of a secret, a project or (``project`` None) a tenant."""
        rows = self._rows
        if rows is None:
            return
        with self._rows_lock:
            self._rows_generation += 1
            if secret_id is not None and project is not None:
                rows.pop((tenant, project, secret_id))
            elif project is not None:
                rows.pop_where(lambda key: key[0] == tenant and key[1] == project)
            else:
                rows.pop_where(lambda key: key[0] == tenant)

    def forget_rows_all(self) -> None:
        """Drop every cached row."""
        rows = self._rows
        if rows is None:
            return
        with self._rows_lock:
            self._rows_generation += 1
            rows.pop_where(lambda _key: True)

    def on_change(self, record: ChangeRecord) -> None:
        """Change-feed subscriber: a ``sealed_secret`` change (``tenant/project/secret_id``)
        drops that row; ``purge`` (``tenant`` or ``tenant/project``) and ``data_key``
        (``tenant/project/purpose``) changes drop the scope's rows."""
        if record.kind == "sealed_secret":
            tenant, project, secret_id = record.entity_id.split("/", 2)
            self.forget_rows(tenant, project, secret_id)
            return
        if record.kind not in ("purge", "data_key"):
            return
        parts = record.entity_id.split("/")
        self.forget_rows(parts[0], parts[1] if len(parts) > 1 else None)

    def _row_for_open(self, name: SecretName) -> SealedSecretRecord:
        rows = self._rows
        if rows is None:
            return self._get(name)
        if not self._rows_fresh():
            # The feed is behind: changes of other replicas may be unseen. Start over once it
            # is read again (changes older than the outage may be pruned from the feed by then).
            if len(rows):
                self.forget_rows_all()
            return self._get(name)
        key = (name.tenant, name.project, name.id)
        rec = rows.get(key)
        if rec is not None:
            return rec
        generation = self._rows_generation
        rec = self._get(name)
        with self._rows_lock:
            if generation == self._rows_generation:  # no invalidation raced with the read
                rows.put(key, rec)
        return rec

    # -- validation ------------------------------------------------------------------------------

    def _check_plaintext(self, plaintext: bytes) -> None:
        if not plaintext:
            raise _bad("plaintext", "must not be empty")
        if len(plaintext) > self._max_plaintext:
            raise _bad("plaintext", f"must be at most {self._max_plaintext} bytes")

    @staticmethod
    def _check_metadata(display_name: str, metadata: Mapping[str, str]) -> None:
        if len(display_name) > MAX_DISPLAY_NAME or not display_name.isprintable():
            raise _bad("display_name", f"must be at most {MAX_DISPLAY_NAME} printable characters")
        if len(metadata) > MAX_METADATA_ENTRIES:
            raise _bad("metadata", f"must have at most {MAX_METADATA_ENTRIES} entries")
        for key, value in metadata.items():
            if METADATA_KEY_RE.fullmatch(key) is None:
                raise _bad("metadata", "keys must match ^[a-z][a-z0-9_.-]{0,63}$")
            if len(value) > MAX_METADATA_VALUE or not value.isprintable():
                raise _bad(
                    "metadata", f"values must be at most {MAX_METADATA_VALUE} printable characters"
                )

    # -- use cases -------------------------------------------------------------------------------

    def _seal(
        self, tenant: str, project: str, secret_id: str, version: int, plaintext: bytes
    ) -> tuple[int, bytes]:
        primary = self._data_keys.primary(tenant, project, PURPOSE)
        blob = sealing.seal(
            primary.aead,
            primary.version,
            plaintext,
            sealing.secret_aad(tenant, project, secret_id, version, PURPOSE),
        )
        return primary.version, blob

    def seal(
        self,
        parent: ProjectName,
        display_name: str,
        plaintext: bytes,
        metadata: Mapping[str, str],
        actor: Actor,
    ) -> SealedSecretRecord:
        """Seal a new secret under the project's primary seal key.

        Raises:
            InvalidArgument: size, display name or metadata out of bounds.
            Unavailable, FailedPrecondition: storage or the customer's key.
        """
        self._check_plaintext(plaintext)
        self._check_metadata(display_name, metadata)
        secret_id = new_handle(KIND_SECRET)
        dk_version, blob = self._seal(parent.tenant, parent.project, secret_id, 1, plaintext)
        now = self._clock()
        name = SecretName(parent.tenant, parent.project, secret_id)
        entry = event(
            actor,
            parent.tenant,
            "secret.seal",
            str(name),
            attributes={"data_key_version": str(dk_version)},
        )
        with audited_change(self._audit, entry):
            return self._store.insert(
                SealedSecretRecord(
                    secret_id=secret_id,
                    tenant_id=parent.tenant,
                    project_id=parent.project,
                    display_name=display_name,
                    metadata=dict(metadata),
                    version=1,
                    data_key_version=dk_version,
                    size_bytes=len(plaintext),
                    ciphertext=blob,
                    created_at=now,
                    updated_at=now,
                )
            )

    def _get(self, name: SecretName) -> SealedSecretRecord:
        rec = self._store.get(name.tenant, name.project, name.id)
        if rec is None:
            raise resource_not_found(str(name))
        return rec

    def _open_record(self, name: SecretName, rec: SealedSecretRecord) -> bytes:
        try:
            version = sealing.sealed_version(rec.ciphertext)
            if version != rec.data_key_version:
                raise DecryptionFailed()
            aead = self._data_keys.key(name.tenant, name.project, PURPOSE, version)
            return sealing.open_sealed(
                aead,
                rec.ciphertext,
                sealing.secret_aad(name.tenant, name.project, name.id, rec.version, PURPOSE),
            )
        except DecryptionFailed:
            raise decryption_failed(str(name)) from None

    def open(self, name: SecretName, actor: Actor) -> tuple[bytes, int]:
        """Decrypt a secret; the durable audit event is written before it is returned.

        Returns:
            ``(plaintext, version)``.

        Raises:
            NotFound: no such secret for this tenant and project.
            FailedPrecondition: ``DATA_KEY_DESTROYED``, ``DECRYPTION_FAILED``,
                ``CUSTOMER_KEY_UNAVAILABLE``.
            Unavailable: ``AUDIT_UNAVAILABLE``, storage or the customer's KMS.
        """
        target = str(name)
        try:
            rec = self._row_for_open(name)
            plaintext = self._open_record(name, rec)
        except ZumikError as error:
            record(
                self._audit,
                event(actor, name.tenant, "secret.open", target, "failure", error.reason),
                durable=False,
            )
            raise
        try:
            record(
                self._audit,
                event(
                    actor,
                    name.tenant,
                    "secret.open",
                    target,
                    "success",
                    "OK",
                    {"version": str(rec.version), "data_key_version": str(rec.data_key_version)},
                ),
                durable=True,
            )
        except Unavailable:
            del plaintext  # fail closed: the plaintext never leaves
            raise
        return plaintext, rec.version

    def get(self, name: SecretName) -> SealedSecretRecord:
        """A secret's metadata.

        Raises:
            NotFound: no such secret for this tenant and project.
        """
        return self._get(name)

    def list_secrets(
        self, parent: ProjectName, *, size: int, token: str
    ) -> tuple[list[SealedSecretRecord], str]:
        """One page of a project's secrets, oldest first, and the next page token.

        Raises:
            InvalidArgument: bad page size or token.
        """
        limit = page_size(size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = page_tokens.codec().decode("secrets", str(parent), token)[0] if token else 0
        rows = self._store.list(parent.tenant, parent.project, page_size=limit + 1, after_seq=after)
        page = rows[:limit]
        next_token = (
            page_tokens.codec().encode("secrets", str(parent), page[-1].seq)
            if len(rows) > limit
            else ""
        )
        return page, next_token

    def update(self, name: SecretName, plaintext: bytes, actor: Actor) -> SealedSecretRecord:
        """Replace the plaintext with a new version (the old ciphertext is overwritten).

        Raises:
            InvalidArgument: size out of bounds.
            NotFound: no such secret.
            FailedPrecondition: ``CONCURRENT_UPDATE`` after repeated races.
        """
        self._check_plaintext(plaintext)
        for _attempt in range(5):
            rec = self._get(name)
            version = rec.version + 1
            dk_version, blob = self._seal(name.tenant, name.project, name.id, version, plaintext)
            entry = event(
                actor,
                name.tenant,
                "secret.update",
                str(name),
                attributes={"version": str(version), "data_key_version": str(dk_version)},
            )
            try:
                with audited_change(self._audit, entry, record_unchanged=False):
                    updated = self._store.replace_ciphertext(
                        rec,
                        version=version,
                        data_key_version=dk_version,
                        size_bytes=len(plaintext),
                        ciphertext=blob,
                        at=self._clock(),
                    )
            finally:
                self.forget_rows(name.tenant, name.project, name.id)
            if updated is not None:
                return updated
        raise FailedPrecondition(
            "the secret kept changing during the update; retry", reason="CONCURRENT_UPDATE"
        )

    def delete(self, name: SecretName, rotate: bool, actor: Actor) -> DataKeyRecord | None:
        """Delete a secret; optionally rotate the project's seal key afterwards.

        Returns:
            The new primary data-key version when ``rotate`` is set.

        Raises:
            NotFound: no such secret.
        """
        try:
            with audited_change(self._audit, event(actor, name.tenant, "secret.delete", str(name))):
                if not self._store.delete(name.tenant, name.project, name.id):
                    raise resource_not_found(str(name))
        finally:
            self.forget_rows(name.tenant, name.project, name.id)
        if not rotate:
            return None
        return self.rotate_data_key(name.parent, PURPOSE, actor)

    # -- data keys -------------------------------------------------------------------------------

    def rotate_data_key(self, parent: ProjectName, purpose: str, actor: Actor) -> DataKeyRecord:
        """Make a new data-key version primary.

        Raises:
            Unavailable, FailedPrecondition: storage or the customer's key.
        """
        # The new version is chosen in the rotation's transaction: the data-key service sets
        # the event's "version" there (outbox.annotate), before it is written with the change.
        entry = event(
            actor, parent.tenant, "data_key.rotate", str(parent), attributes={"purpose": purpose}
        )
        with audited_change(self._audit, entry):
            return self._data_keys.rotate(parent.tenant, parent.project, purpose)

    def list_data_keys(
        self, parent: ProjectName, purpose: str, *, size: int, token: str
    ) -> tuple[list[DataKeyRecord], str]:
        """One page of a project's data-key versions and the next page token.

        Raises:
            InvalidArgument: bad page size or token.
        """
        limit = page_size(size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        kind = f"data_keys/{purpose}"
        after = page_tokens.codec().decode(kind, str(parent), token)[0] if token else 0
        rows = self._data_keys.list_page(
            parent.tenant, parent.project, purpose, page_size=limit + 1, after_version=after
        )
        page = rows[:limit]
        next_token = (
            page_tokens.codec().encode(kind, str(parent), page[-1].version)
            if len(rows) > limit
            else ""
        )
        return page, next_token

    def rewrap(self, parent: ProjectName, *, batch: int, token: str, actor: Actor) -> RewrapResult:
        """Re-encrypt one batch of the project's secrets under the primary seal version.

        The plaintext of each secret exists only between its open and its re-seal; nothing is
        returned. Secrets under a destroyed version are skipped (they cannot be opened).

        Raises:
            InvalidArgument: bad batch size or token.
            Unavailable, FailedPrecondition: storage or the customer's key.
        """
        limit = page_size(batch, DEFAULT_BATCH, MAX_BATCH, "batch_size")
        tenant, project = parent.tenant, parent.project
        primary = self._data_keys.existing_primary(tenant, project, PURPOSE)
        if primary is None:
            return RewrapResult(0, 0, "", 0)
        after, target = (
            page_tokens.codec().decode("rewrap", str(parent), token) if token else (0, primary)
        )
        if target != primary:  # rotated since the last batch: start over towards the new one
            after = 0
        destroyed = {
            v.version
            for v in self._data_keys.versions(tenant, project, PURPOSE)
            if v.state == "destroyed"
        }
        key = self._data_keys.key(tenant, project, PURPOSE, primary)
        rows = self._store.list(
            tenant, project, page_size=limit + 1, after_seq=after, not_on_version=primary
        )
        done = 0
        for rec in rows[:limit]:
            if rec.data_key_version in destroyed:
                continue
            name = SecretName(tenant, project, rec.secret_id)
            aad = sealing.secret_aad(tenant, project, rec.secret_id, rec.version, PURPOSE)
            try:
                plaintext = self._open_record(name, rec)
            except FailedPrecondition as error:
                _LOG.warning(
                    "rewrap skipped a secret that does not open",
                    extra={"secret": str(name), "reason": error.reason},
                )
                continue
            blob = sealing.seal(key, primary, plaintext, aad)
            del plaintext
            if (
                self._store.replace_ciphertext(
                    rec,
                    version=rec.version,
                    data_key_version=primary,
                    size_bytes=rec.size_bytes,
                    ciphertext=blob,
                    at=self._clock(),
                )
                is not None
            ):
                done += 1
        self.forget_rows(tenant, project)
        counts = self._store.count_by_data_key_version(tenant, project)
        remaining = sum(n for v, n in counts.items() if v != primary and v not in destroyed)
        more = len(rows) > limit
        next_token = (
            page_tokens.codec().encode("rewrap", str(parent), rows[limit - 1].seq, primary)
            if more
            else ""
        )
        record(
            self._audit,
            event(
                actor,
                tenant,
                "secrets.rewrap",
                str(parent),
                "success",
                "OK",
                {"rewrapped": str(done), "remaining": str(remaining), "target": str(primary)},
            ),
            durable=False,
        )
        return RewrapResult(done, remaining, next_token, primary)

    def destroy_data_key(
        self, parent: ProjectName, purpose: str, version: int, confirm: int, actor: Actor
    ) -> DestroyResult:
        """Crypto-shred one data-key version (idempotent); audited durably.

        Raises:
            InvalidArgument: ``confirm`` differs from ``version``, or version is 0.
            NotFound: no such version.
            FailedPrecondition: ``DATA_KEY_PRIMARY``.
            Unavailable: storage, or the audit event could not be stored.
        """
        if version < 1:
            raise _bad("version", "must be at least 1")
        if confirm != version:
            raise _bad("confirm_version", "must repeat version exactly", "CONFIRMATION_MISMATCH")
        lost = 0
        if purpose == PURPOSE:
            # Counted before the destruction (it deletes no secret; a secret sealed meanwhile
            # is under the primary, which cannot be destroyed).
            counts = self._store.count_by_data_key_version(parent.tenant, parent.project)
            lost = counts.get(version, 0)
        entry = event(
            actor,
            parent.tenant,
            "data_key.destroy",
            str(parent),
            attributes={"purpose": purpose, "version": str(version), "unrecoverable": str(lost)},
        )
        try:
            with audited_change(self._audit, entry):
                rec = self._data_keys.destroy(parent.tenant, parent.project, purpose, version)
                if rec is None:
                    raise resource_not_found(f"{parent}/dataKeys/{purpose}/versions/{version}")
        finally:
            self.forget_rows(parent.tenant, parent.project)
        return DestroyResult(rec, lost)


__all__ = [
    "DestroyResult",
    "RewrapResult",
    "SealedSecrets",
    "data_key_destroyed",
    "decryption_failed",
]
