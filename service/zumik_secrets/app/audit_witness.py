"""Audit witnesses: signed checkpoints published outside the database.

Why
    Checkpoints stored next to the events protect against nothing once someone can write the
    database: they can edit an event, recompute every later link, and delete the checkpoints
    that disagree. A *witness* is a sink that the database writer cannot rewrite; every
    checkpoint the service signs (periodic, on demand, at export, retention anchors) is also
    published there, and verification (``VerifyChain`` on the server, ``zumik-secrets audit
    verify --witness`` offline) fails when the chain and the witness disagree.

The port (:class:`AuditWitness`)
    Two calls. ``publish(checkpoints)`` appends signed checkpoints; it must not return before
    they are durable in the witness, and it must never allow an earlier entry to be changed or
    removed. ``checkpoints(tenant)`` returns every published checkpoint of a tenant. Entries are
    :func:`zumik_secrets.core.audit_chain.checkpoint_line` JSON lines: signed, so a witness
    needs no trust of its own beyond *append-only*, and verifiers check every signature.

    :class:`FileWitness` is the built-in adapter: an append-only directory. Adapters for an
    external witness implement the same two calls, for example: an object store bucket with a
    retention lock (S3 Object Lock in compliance mode, GCS bucket lock; one object per
    publish, never overwritten), a table that only a second database role may INSERT into and
    nobody may UPDATE or DELETE, or a transparency log (a Trillian/Tessera log, Rekor). Wire
    one in :mod:`zumik_secrets.server.runtime` where ``FileWitness`` is built.

What it does not do
    A witness pins what was signed. Events written after the last published checkpoint are
    pinned only by the process that wrote them (see ``AuditLog``: it remembers the last link
    it wrote per tenant and refuses to sign a head that does not extend it) until the next
    checkpoint, at most ``ZUMIK_AUDIT_CHECKPOINT_SECONDS`` (60 s) or
    ``ZUMIK_AUDIT_CHECKPOINT_EVENTS`` (1000) events of the tenant later.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from zumik_secrets.core.audit_chain import Checkpoint, checkpoint_line, parse_checkpoint_line

WITNESS_FILE = "checkpoints.jsonl"
"""The file :class:`FileWitness` appends to, inside its directory."""


class AuditWitness(Protocol):
    """A sink for signed checkpoints that the database writer cannot rewrite."""

    def publish(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Append ``checkpoints`` durably; never changes what was published before.

        Raises:
            OSError: (or an adapter's own error) when they could not be made durable.
        """
        ...

    def checkpoints(self, tenant: str) -> list[Checkpoint]:
        """Every published checkpoint of ``tenant``, in publication order."""
        ...


class FileWitness:
    """An append-only directory: one JSON line per checkpoint in ``checkpoints.jsonl``.

    The file is opened ``O_APPEND`` and each publish is one ``write`` followed by ``fsync``
    (the directory too when the file was created), mode 0600 in a 0700 directory. Mount the
    directory somewhere the database's writers cannot reach (another volume, another host's
    share, a WORM mount); ``chattr +a`` on the file makes the append-only rule the kernel's.
    """

    def __init__(self, directory: Path) -> None:
        """Use ``directory`` (created 0700 when missing)."""
        self._dir = directory
        self._path = directory / WITNESS_FILE
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        """The witness file."""
        return self._path

    def publish(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Append ``checkpoints`` and fsync.

        Raises:
            OSError: the directory or file cannot be written.
        """
        if not checkpoints:
            return
        data = "".join(checkpoint_line(cp) + "\n" for cp in checkpoints).encode("utf-8")
        with self._lock:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            created = not self._path.exists()
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                dir_fd = os.open(self._dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    def checkpoints(self, tenant: str) -> list[Checkpoint]:
        """Every checkpoint of ``tenant`` in the file (a malformed line raises).

        Raises:
            zumik_secrets.core.errors.InvalidArgument: a line is not a checkpoint line.
            OSError: the file exists but cannot be read.
        """
        return [cp for cp in read_witness(self._path) if cp.tenant == tenant]


def _witness_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".jsonl")
    return [path]


def read_witness(path: Path) -> Iterator[Checkpoint]:
    """The checkpoints in a witness file, or in every ``*.jsonl`` file of a witness directory.

    A missing file yields nothing (nothing was published yet).

    Raises:
        zumik_secrets.core.errors.InvalidArgument: reason ``INVALID_EXPORT``, a line that is
            not a checkpoint line.
        OSError: a file cannot be read.
    """
    for file in _witness_files(path):
        if not file.exists():
            continue
        with file.open(encoding="utf-8") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    yield parse_checkpoint_line(raw, number)
