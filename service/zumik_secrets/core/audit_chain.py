"""The audit hash chain: canonical form, links, signed checkpoints, verification, export lines.

Pure (standard library plus :mod:`zumik_secrets.core.primitives`), so the server and the offline
``zumik-secrets audit verify`` command run the very same code.

Chain
    Each tenant has its own chain (tenant ``-`` is the service-wide chain for events that belong
    to no tenant). Event ``n`` (sequence numbers start at 1, gapless) stores
    ``prev_hash = h_{n-1}`` and ``hash = h_n = SHA-256(h_{n-1} || canonical(event_n))``, with
    ``h_0`` = 32 zero bytes. After a retention sweep the chain starts at a signed checkpoint
    (the *anchor*) whose head hash is ``h`` of the last pruned event.

Canonical form (version 1)
    The UTF-8 bytes of a JSON object with exactly these keys, sorted by code point, no
    whitespace (``separators=(",", ":")``), non-ASCII characters written as themselves and only
    ``"``, ``\\`` and control characters escaped (Python ``json.dumps(..., sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)``)::

        {"action", "actor", "attrs", "id", "outcome", "reason", "subject", "target",
         "tenant", "time", "trace", "v": 1}

    ``attrs`` is an object of string values; ``time`` is RFC 3339 UTC with exactly six
    fractional digits (``2025-01-31T12:00:00.000123Z``). The sequence number is deliberately
    *not* part of the canonical form: an event's position is bound by the link to its
    predecessor (and every checkpoint signs a sequence number with its head), and leaving it out
    lets the verifier tell an event moved to another position (self-consistent, wrong link:
    REORDERED) from an event whose content changed (EDITED).

Checkpoint statement (version 1)
    Ed25519 over the same JSON style of
    ``{"head": <hex>, "seq": n, "tenant": t, "time": <RFC 3339>, "type":
    "zumik.audit.checkpoint", "v": 1}``. ``kid`` selects the public key and is not signed.

Export format (``zumik-audit-export/1``)
    One JSON object per line, ``type`` first among equals:

    * ``{"type": "event", "tenant", "seq", "id", "time", "actor", "subject", "action",
      "target", "outcome", "reason", "trace", "attrs", "prev": <hex>, "hash": <hex>}``
    * ``{"type": "checkpoint", "tenant", "seq", "head": <hex>, "time", "kid",
      "sig": <base64url>}``
    * ``{"type": "resume", "tenant", "seq", "hash": <hex>}``: an export that starts after the
      retained start names the link it continues from. The offline verifier trusts it only when
      a signed checkpoint at that sequence confirms it (the server starts such exports at a
      checkpoint where it has one).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Any

from zumik_secrets.core import primitives
from zumik_secrets.core.encoding import b64url_decode, b64url_encode
from zumik_secrets.core.errors import FieldViolation, InvalidArgument

CANONICAL_VERSION = 1
EXPORT_FORMAT = "zumik-audit-export/1"
HASH_SIZE = 32
GENESIS_HASH = bytes(HASH_SIZE)
SERVICE_TENANT = "-"
"""Tenant of the service-wide chain (events that belong to no tenant)."""
OUTCOMES = ("success", "failure", "denied")
CHECKPOINT_TYPE = "zumik.audit.checkpoint"
LOOKAHEAD = 256
"""How far past a broken link the verifier looks to classify it (moved, inserted)."""


class ChainFailure(StrEnum):
    """Why a chain does not verify (mirrors the wire enum ``ChainFailure``)."""

    EDITED = "EDITED"
    DELETED = "DELETED"
    REORDERED = "REORDERED"
    INSERTED = "INSERTED"
    CHECKPOINT_MISMATCH = "CHECKPOINT_MISMATCH"
    UNANCHORED = "UNANCHORED"
    """Offline only (:func:`verify_export`): a start or tail no signed checkpoint covers."""


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with exactly six fractional digits.

    Raises:
        ValueError: ``value`` is naive.
    """
    if value.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    if value.year < 1000:  # strftime's own rendering of short years
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The same text as strftime, several times faster (every audit event is formatted).
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
        f"{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}Z"
    )


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`.

    Raises:
        ValueError: not in that exact form.
    """
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _quoted(value: str) -> str:
    if not isinstance(value, str):  # json.dumps would render it otherwise: refuse it
        raise TypeError(f"audit event fields are strings, not {type(value).__name__}")
    return encode_basestring(value)


def _json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """One stored audit event with its links.

    Attributes:
        tenant: Tenant id of the chain (``-`` for the service-wide chain).
        sequence: Position in the chain, from 1, gapless.
        event_id: Unique id (``evt_...``).
        time: When it was recorded (UTC, microsecond precision).
        actor: SPIFFE ID of the caller.
        actor_subject: Claim subject, when there was one.
        action: Dotted event type.
        target: Resource name or handle.
        outcome: ``success``, ``failure`` or ``denied``.
        reason: UPPER_SNAKE reason code, or "".
        trace_id: Trace id of the causing call, or "".
        attributes: Sorted (key, value) pairs.
        prev_hash: ``h_{n-1}``.
        hash: ``h_n``.
    """

    tenant: str
    sequence: int
    event_id: str
    time: datetime
    actor: str
    actor_subject: str
    action: str
    target: str
    outcome: str
    reason: str
    trace_id: str
    attributes: tuple[tuple[str, str], ...]
    prev_hash: bytes
    hash: bytes

    def canonical(self) -> bytes:
        """The canonical form (see the module docstring)."""
        return canonical_bytes(
            tenant=self.tenant,
            event_id=self.event_id,
            time=self.time,
            actor=self.actor,
            actor_subject=self.actor_subject,
            action=self.action,
            target=self.target,
            outcome=self.outcome,
            reason=self.reason,
            trace_id=self.trace_id,
            attributes=self.attributes,
        )

    def self_consistent(self) -> bool:
        """Whether ``hash`` is the link of this content to its own stored ``prev_hash``."""
        return link(self.prev_hash, self.canonical()) == self.hash


def canonical_bytes(
    *,
    tenant: str,
    event_id: str,
    time: datetime,
    actor: str,
    actor_subject: str,
    action: str,
    target: str,
    outcome: str,
    reason: str,
    trace_id: str,
    attributes: Iterable[tuple[str, str]],
) -> bytes:
    """Canonical form of an event's content (version 1).

    Rendered piece by piece, keys in their sorted order, each string through the escaping
    ``json.dumps(..., ensure_ascii=False)`` uses: the same bytes as dumping the whole object
    (module docstring; tests/unit/test_core_audit_chain.py compares both), about a third of
    its cost (every event is rendered when chained and again when verified).
    """
    attrs = ",".join(f"{_quoted(k)}:{_quoted(v)}" for k, v in sorted(dict(attributes).items()))
    return (
        f'{{"action":{_quoted(action)},"actor":{_quoted(actor)},"attrs":{{{attrs}}},'
        f'"id":{_quoted(event_id)},"outcome":{_quoted(outcome)},"reason":{_quoted(reason)},'
        f'"subject":{_quoted(actor_subject)},"target":{_quoted(target)},'
        f'"tenant":{_quoted(tenant)},"time":"{format_time(time)}","trace":{_quoted(trace_id)},'
        f'"v":{CANONICAL_VERSION}}}'
    ).encode()


def link(prev_hash: bytes, canonical: bytes) -> bytes:
    """``SHA-256(prev_hash || canonical)``."""
    return primitives.sha256(prev_hash + canonical)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that a tenant's chain had ``head_hash`` at ``sequence``.

    Attributes:
        tenant: Tenant id of the chain.
        sequence: Sequence number of the head covered (0 for an empty chain).
        head_hash: ``h_sequence``.
        time: When it was signed.
        kid: Id of the signing key.
        signature: Ed25519 over :func:`checkpoint_statement`.
    """

    tenant: str
    sequence: int
    head_hash: bytes
    time: datetime
    kid: str
    signature: bytes

    def statement(self) -> bytes:
        """The signed bytes."""
        return checkpoint_statement(self.tenant, self.sequence, self.head_hash, self.time)


def checkpoint_statement(tenant: str, sequence: int, head_hash: bytes, time: datetime) -> bytes:
    """The bytes a checkpoint signs (see the module docstring)."""
    return _json(
        {
            "v": CANONICAL_VERSION,
            "type": CHECKPOINT_TYPE,
            "tenant": tenant,
            "seq": sequence,
            "head": head_hash.hex(),
            "time": format_time(time),
        }
    )


def sign_checkpoint(
    signer: primitives.Ed25519Signer,
    kid: str,
    tenant: str,
    sequence: int,
    head_hash: bytes,
    time: datetime,
) -> Checkpoint:
    """Sign a checkpoint over ``(tenant, sequence, head_hash, time)``."""
    signature = signer.sign(checkpoint_statement(tenant, sequence, head_hash, time))
    return Checkpoint(tenant, sequence, head_hash, time, kid, signature)


def checkpoint_valid(checkpoint: Checkpoint, keys: Mapping[str, bytes]) -> bool:
    """Whether the checkpoint's signature verifies under the key its kid names."""
    public = keys.get(checkpoint.kid)
    if public is None:
        return False
    try:
        primitives.ed25519_verify(public, checkpoint.signature, checkpoint.statement())
    except primitives.InvalidSignature:
        return False
    return True


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of a verification.

    Attributes:
        ok: Everything checked verified.
        first_bad_sequence: When not ok, the first sequence number that failed.
        failure: When not ok, why.
        detail: One English sentence about the failure (no event content).
        checked_count: Events whose links were checked.
        head_sequence: Sequence number of the chain head (as the caller knows it, else the
            last event seen).
    """

    ok: bool
    first_bad_sequence: int = 0
    failure: ChainFailure | None = None
    detail: str = ""
    checked_count: int = 0
    head_sequence: int = 0


@dataclass(frozen=True, slots=True)
class _Bad:
    sequence: int
    failure: ChainFailure
    detail: str


@dataclass
class _Walk:
    prev_seq: int
    prev_hash: bytes
    checked: int = 0
    recent: deque[tuple[int, bytes]] = field(default_factory=lambda: deque(maxlen=LOOKAHEAD))


def _classify(ev: ChainEvent, walk: _Walk, ahead: Sequence[ChainEvent]) -> _Bad | None:
    """Check one event against the walk; on failure say what most likely happened."""
    expected = walk.prev_seq + 1
    if ev.sequence != expected:
        if ev.sequence > expected:
            if any(e.sequence == expected for e in ahead):
                return _Bad(expected, ChainFailure.REORDERED, "an event appears out of order")
            return _Bad(expected, ChainFailure.DELETED, "a sequence number is missing")
        return _Bad(ev.sequence, ChainFailure.INSERTED, "a sequence number appears twice")
    if ev.prev_hash == walk.prev_hash and link(walk.prev_hash, ev.canonical()) == ev.hash:
        return None
    intact = ev.self_consistent()
    if intact and any(e.hash == ev.prev_hash for e in ahead):
        # Intact, but its predecessor comes later: events changed places.
        return _Bad(ev.sequence, ChainFailure.REORDERED, "an event appears out of order")
    nxt = ahead[0] if ahead else None
    if nxt is not None and nxt.prev_hash == walk.prev_hash and nxt.self_consistent():
        # The next event links straight to the previous one: this one was slipped in.
        return _Bad(ev.sequence, ChainFailure.INSERTED, "an event does not belong in the chain")
    if not intact:
        return _Bad(ev.sequence, ChainFailure.EDITED, "an event's content does not match its hash")
    for seq, digest in walk.recent:
        if digest == ev.prev_hash:
            return _Bad(seq + 1, ChainFailure.INSERTED, "an event does not belong in the chain")
    return _Bad(ev.sequence, ChainFailure.DELETED, "an event links to one that is missing")


def _lookahead(events: Iterable[ChainEvent]) -> Iterator[tuple[ChainEvent, Sequence[ChainEvent]]]:
    it = iter(events)
    buf: deque[ChainEvent] = deque()
    for ev in it:
        buf.append(ev)
        if len(buf) > LOOKAHEAD:
            break
    while buf:
        ev = buf.popleft()
        for more in it:
            buf.append(more)
            break
        yield ev, tuple(buf)


def verify_chain(
    events: Iterable[ChainEvent],
    *,
    tenant: str,
    checkpoints: Iterable[Checkpoint] = (),
    keys: Mapping[str, bytes] | None = None,
    anchor: tuple[int, bytes] | None = None,
    first_sequence: int | None = None,
    head_sequence: int | None = None,
    to_head: bool = True,
) -> ChainReport:
    """Verify a run of a tenant's chain, in the order given, and report the first failure.

    Args:
        events: The events, expected in ascending sequence order (streamed; only a window of
            :data:`LOOKAHEAD` events is held).
        tenant: The chain's tenant; events or checkpoints of another tenant fail.
        checkpoints: Checkpoints over the range (and beyond it, to detect a truncated tail).
        keys: Checkpoint public keys by kid; a checkpoint with an unknown kid or a bad
            signature is a CHECKPOINT_MISMATCH.
        anchor: ``(sequence, hash)`` the run continues from, when the caller vouches for it
            (a range check). When None: the genesis if the run starts at 1, else a signed
            checkpoint at ``first_sequence - 1`` (the retention anchor), else DELETED.
        first_sequence: Sequence the run should start at (the first retained one); defaults to
            the first event's.
        head_sequence: The chain head as the store records it; events missing before it are
            DELETED (when ``to_head``).
        to_head: Whether the run is meant to reach the head (so checkpoints past the last event
            mean a truncated tail).

    Returns:
        The report; ``ok`` only if every event and every checkpoint verified.
    """
    keys = keys or {}
    cps = sorted(checkpoints, key=lambda cp: cp.sequence)
    bad: list[_Bad] = []
    valid_cps: dict[int, Checkpoint] = {}
    for cp in cps:
        if cp.tenant == tenant and checkpoint_valid(cp, keys):
            seen = valid_cps.get(cp.sequence)
            if seen is not None and seen.head_hash != cp.head_hash:
                # Two signed statements about one position disagree (e.g. the database's and
                # the witness's after a rewrite and a re-signature): at most one is the truth.
                bad.append(
                    _Bad(cp.sequence, ChainFailure.CHECKPOINT_MISMATCH, "checkpoints disagree")
                )
            valid_cps.setdefault(cp.sequence, cp)
        else:
            bad.append(
                _Bad(cp.sequence, ChainFailure.CHECKPOINT_MISMATCH, "a checkpoint fails to verify")
            )
    stream = _lookahead(events)
    first = next(stream, None)
    start = first[0].sequence if first is not None else None
    if first_sequence is not None:
        start = first_sequence if start is None else min(start, first_sequence)
    if anchor is None:
        if start is None or start <= 1:
            anchor = (0, GENESIS_HASH)
        elif (start - 1) in valid_cps:
            anchor = (start - 1, valid_cps[start - 1].head_hash)
        else:
            below = [seq for seq in valid_cps if seq < start - 1]
            missing = (max(below) + 1) if below else 1
            bad.append(_Bad(missing, ChainFailure.DELETED, "the start of the chain is missing"))
            anchor = (start - 1, first[0].prev_hash if first is not None else GENESIS_HASH)
    walk = _Walk(anchor[0], anchor[1])
    if anchor[0] in valid_cps and valid_cps[anchor[0]].head_hash != anchor[1]:
        bad.append(_Bad(anchor[0], ChainFailure.CHECKPOINT_MISMATCH, "a checkpoint does not match"))
    pending: Iterable[tuple[ChainEvent, Sequence[ChainEvent]]] = (
        stream if first is None else _chain_first(first, stream)
    )
    for ev, ahead in pending:
        if ev.tenant != tenant:
            bad.append(_Bad(ev.sequence, ChainFailure.INSERTED, "an event of another chain"))
            break
        problem = _classify(ev, walk, ahead)
        if problem is not None:
            bad.append(problem)
            break
        walk.checked += 1
        walk.prev_seq, walk.prev_hash = ev.sequence, ev.hash
        walk.recent.append((ev.sequence, ev.hash))
        covering = valid_cps.get(ev.sequence)
        if covering is not None and covering.head_hash != ev.hash:
            bad.append(
                _Bad(ev.sequence, ChainFailure.CHECKPOINT_MISMATCH, "a checkpoint does not match")
            )
            break
    else:
        last = walk.prev_seq
        if to_head:
            beyond = [seq for seq in valid_cps if seq > last]
            if beyond:
                bad.append(
                    _Bad(
                        last + 1,
                        ChainFailure.CHECKPOINT_MISMATCH,
                        "a checkpoint covers events that are missing (truncated tail)",
                    )
                )
            elif head_sequence is not None and head_sequence > last:
                bad.append(_Bad(last + 1, ChainFailure.DELETED, "the tail of the chain is missing"))
    head = head_sequence if head_sequence is not None else walk.prev_seq
    if bad:
        worst = min(bad, key=lambda b: b.sequence)
        return ChainReport(
            ok=False,
            first_bad_sequence=worst.sequence,
            failure=worst.failure,
            detail=worst.detail,
            checked_count=walk.checked,
            head_sequence=head,
        )
    return ChainReport(ok=True, checked_count=walk.checked, head_sequence=head)


def _chain_first(
    first: tuple[ChainEvent, Sequence[ChainEvent]],
    rest: Iterator[tuple[ChainEvent, Sequence[ChainEvent]]],
) -> Iterator[tuple[ChainEvent, Sequence[ChainEvent]]]:
    yield first
    yield from rest


# -- export lines ----------------------------------------------------------------------------


def event_line(ev: ChainEvent) -> str:
    """The export line of an event."""
    return json.dumps(
        {
            "type": "event",
            "tenant": ev.tenant,
            "seq": ev.sequence,
            "id": ev.event_id,
            "time": format_time(ev.time),
            "actor": ev.actor,
            "subject": ev.actor_subject,
            "action": ev.action,
            "target": ev.target,
            "outcome": ev.outcome,
            "reason": ev.reason,
            "trace": ev.trace_id,
            "attrs": dict(ev.attributes),
            "prev": ev.prev_hash.hex(),
            "hash": ev.hash.hex(),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def checkpoint_line(cp: Checkpoint) -> str:
    """The export line of a checkpoint."""
    return json.dumps(
        {
            "type": "checkpoint",
            "tenant": cp.tenant,
            "seq": cp.sequence,
            "head": cp.head_hash.hex(),
            "time": format_time(cp.time),
            "kid": cp.kid,
            "sig": b64url_encode(cp.signature),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def resume_line(tenant: str, sequence: int, head_hash: bytes) -> str:
    """The first line of an export that starts after the retained start."""
    return json.dumps(
        {"type": "resume", "tenant": tenant, "seq": sequence, "hash": head_hash.hex()},
        separators=(",", ":"),
    )


@dataclass
class ExportContents:
    """An export file, parsed.

    Attributes:
        tenant: The chain's tenant.
        events: Events in file order.
        checkpoints: Checkpoints in file order.
        resume: ``(sequence, hash)`` from a resume line, when the export continues a chain.
    """

    tenant: str = ""
    events: list[ChainEvent] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    resume: tuple[int, bytes] | None = None


def _bad_line(number: int, problem: str) -> InvalidArgument:
    return InvalidArgument(
        f"export line {number}: {problem}",
        reason="INVALID_EXPORT",
        violations=[FieldViolation(f"line {number}", problem)],
    )


def _str(doc: Mapping[str, Any], key: str, number: int) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise _bad_line(number, f"{key!r} must be a string")
    return value


def _int(doc: Mapping[str, Any], key: str, number: int) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad_line(number, f"{key!r} must be a non-negative integer")
    return value


def _hex(doc: Mapping[str, Any], key: str, number: int) -> bytes:
    try:
        value = bytes.fromhex(_str(doc, key, number))
    except ValueError:
        raise _bad_line(number, f"{key!r} must be hex") from None
    if len(value) != HASH_SIZE:
        raise _bad_line(number, f"{key!r} must be {HASH_SIZE} bytes")
    return value


def _time(doc: Mapping[str, Any], number: int) -> datetime:
    try:
        return parse_time(_str(doc, "time", number))
    except ValueError:
        raise _bad_line(number, "'time' must be RFC 3339 UTC with 6 fractional digits") from None


def _checkpoint_from(doc: Mapping[str, Any], number: int) -> Checkpoint:
    try:
        signature = b64url_decode(_str(doc, "sig", number))
    except ValueError:
        raise _bad_line(number, "'sig' must be base64url") from None
    return Checkpoint(
        tenant=_str(doc, "tenant", number),
        sequence=_int(doc, "seq", number),
        head_hash=_hex(doc, "head", number),
        time=_time(doc, number),
        kid=_str(doc, "kid", number),
        signature=signature,
    )


def parse_checkpoint_line(text: str, number: int = 1) -> Checkpoint:
    """Parse one :func:`checkpoint_line` (a witness entry; its signature is not checked here).

    Raises:
        InvalidArgument: reason ``INVALID_EXPORT`` when it is not a checkpoint line.
    """
    try:
        doc = json.loads(text)
    except ValueError:
        raise _bad_line(number, "not a JSON object") from None
    if not isinstance(doc, dict) or doc.get("type") != "checkpoint":
        raise _bad_line(number, "not a checkpoint line")
    return _checkpoint_from(doc, number)


def parse_export(lines: Iterable[str]) -> ExportContents:
    """Parse an export (blank lines ignored; one chain per export).

    Raises:
        InvalidArgument: reason ``INVALID_EXPORT`` naming the first malformed line.
    """
    out = ExportContents()
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            doc = json.loads(text)
        except ValueError:
            raise _bad_line(number, "not a JSON object") from None
        if not isinstance(doc, dict):
            raise _bad_line(number, "not a JSON object")
        kind = doc.get("type")
        tenant = _str(doc, "tenant", number)
        if out.tenant and tenant != out.tenant and kind != "event":
            raise _bad_line(number, "an export holds one tenant's chain")
        out.tenant = out.tenant or tenant
        if kind == "event":
            attrs = doc.get("attrs")
            if not isinstance(attrs, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()
            ):
                raise _bad_line(number, "'attrs' must be an object of strings")
            out.events.append(
                ChainEvent(
                    tenant=tenant,
                    sequence=_int(doc, "seq", number),
                    event_id=_str(doc, "id", number),
                    time=_time(doc, number),
                    actor=_str(doc, "actor", number),
                    actor_subject=_str(doc, "subject", number),
                    action=_str(doc, "action", number),
                    target=_str(doc, "target", number),
                    outcome=_str(doc, "outcome", number),
                    reason=_str(doc, "reason", number),
                    trace_id=_str(doc, "trace", number),
                    attributes=tuple(sorted(attrs.items())),
                    prev_hash=_hex(doc, "prev", number),
                    hash=_hex(doc, "hash", number),
                )
            )
        elif kind == "checkpoint":
            out.checkpoints.append(_checkpoint_from(doc, number))
        elif kind == "resume":
            if out.resume is None and not out.events:
                out.resume = (_int(doc, "seq", number), _hex(doc, "hash", number))
        else:
            raise _bad_line(number, "'type' must be event, checkpoint or resume")
    return out


def verify_export(
    lines: Iterable[str],
    keys: Mapping[str, bytes],
    *,
    witness: Iterable[Checkpoint] = (),
    allow_unanchored: bool = False,
) -> ChainReport:
    """Verify an export offline: links, sequence numbers and every checkpoint's signature.

    Nothing in the file is trusted that the keys cannot verify:

    * the export's last event must be covered by a valid signed checkpoint at its sequence
      (in the export or the witness), else the unanchored tail is a failure (``UNANCHORED``);
    * a ``resume`` line (an export that starts after the retained start) is used only when a
      valid checkpoint at its sequence confirms it, else the start is a failure
      (``UNANCHORED``);
    * a checkpoint past the last exported event counts as a truncated tail;
    * ``witness`` checkpoints (from a witness the database writer cannot rewrite) of the
      export's tenant are checked like the export's own: a bad signature, a head that differs
      from the exported event at that sequence, or two valid checkpoints at one sequence that
      disagree is a ``CHECKPOINT_MISMATCH``. Witness checkpoints before the export's start (the
      events are not in it) or after its end (published after the export was taken) are not
      judged.

    ``allow_unanchored`` turns the two ``UNANCHORED`` failures into passes (the report says
    nothing more; the caller knows it asked for less).

    Raises:
        InvalidArgument: reason ``INVALID_EXPORT`` when a line is malformed.
    """
    contents = parse_export(lines)
    own = list(contents.checkpoints)
    first_event = contents.events[0].sequence if contents.events else None
    last_event = contents.events[-1].sequence if contents.events else None
    start = (
        contents.resume[0]
        if contents.resume is not None
        else (first_event - 1 if first_event is not None else None)
    )
    witnessed = [
        cp
        for cp in witness
        if cp.tenant == contents.tenant
        and (start is None or cp.sequence >= start)
        and (last_event is None or cp.sequence <= last_event)
    ]
    every = own + witnessed
    valid = [cp for cp in every if cp.tenant == contents.tenant and checkpoint_valid(cp, keys)]
    anchor = contents.resume
    if anchor is not None:
        confirming = [cp for cp in valid if cp.sequence == anchor[0]]
        if any(cp.head_hash != anchor[1] for cp in confirming):
            return ChainReport(
                ok=False,
                first_bad_sequence=anchor[0],
                failure=ChainFailure.CHECKPOINT_MISMATCH,
                detail="the resume point does not match its checkpoint",
            )
        if not confirming and not allow_unanchored:
            return ChainReport(
                ok=False,
                first_bad_sequence=anchor[0] + 1,
                failure=ChainFailure.UNANCHORED,
                detail="the export starts at a resume point no signed checkpoint confirms",
            )
    report = verify_chain(
        contents.events,
        tenant=contents.tenant,
        checkpoints=every,
        keys=keys,
        anchor=anchor,
    )
    if not report.ok or allow_unanchored or last_event is None:
        return report
    if not any(cp.sequence == last_event for cp in valid):
        covered = [cp.sequence for cp in valid if cp.sequence < last_event]
        return ChainReport(
            ok=False,
            first_bad_sequence=(max(covered) + 1) if covered else (first_event or 1),
            failure=ChainFailure.UNANCHORED,
            detail="no signed checkpoint covers the export's last event (unanchored tail)",
            checked_count=report.checked_count,
            head_sequence=report.head_sequence,
        )
    return report


# -- building links --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event before it has a place in its chain (the store assigns sequence and hashes).

    Attributes mirror :class:`ChainEvent`; ``attributes`` are sorted (key, value) pairs.
    """

    tenant: str
    event_id: str
    time: datetime
    actor: str
    actor_subject: str
    action: str
    target: str
    outcome: str
    reason: str
    trace_id: str
    attributes: tuple[tuple[str, str], ...]


def extend_chain(
    head_sequence: int, head_hash: bytes, drafts: Sequence[EventDraft]
) -> list[ChainEvent]:
    """Place ``drafts`` (all of one tenant) after the head, computing each link.

    Returns:
        The chained events, sequences ``head_sequence + 1`` onwards.
    """
    out: list[ChainEvent] = []
    prev = head_hash
    for offset, d in enumerate(drafts, start=1):
        canonical = canonical_bytes(
            tenant=d.tenant,
            event_id=d.event_id,
            time=d.time,
            actor=d.actor,
            actor_subject=d.actor_subject,
            action=d.action,
            target=d.target,
            outcome=d.outcome,
            reason=d.reason,
            trace_id=d.trace_id,
            attributes=d.attributes,
        )
        digest = link(prev, canonical)
        out.append(
            ChainEvent(
                tenant=d.tenant,
                sequence=head_sequence + offset,
                event_id=d.event_id,
                time=d.time,
                actor=d.actor,
                actor_subject=d.actor_subject,
                action=d.action,
                target=d.target,
                outcome=d.outcome,
                reason=d.reason,
                trace_id=d.trace_id,
                attributes=d.attributes,
                prev_hash=prev,
                hash=digest,
            )
        )
        prev = digest
    return out
