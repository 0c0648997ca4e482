"""Certificate files that are re-read when they change: what a channel needs to rebuild itself.

grpcio has no Python API for a client-side certificate provider, so the channels of this package
watch the files instead: before a call, at most every ``check_interval`` seconds, they ``stat``
the CA, certificate and key files; when any changed (mtime, size, inode: a Kubernetes Secret
volume swaps a symlink, which changes all three) they read them again and build a new
underlying channel for the calls that follow. Calls already running finish on the old channel,
which is closed once the longest deadline has passed.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

_Signature = tuple[tuple[int, int, int, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The PEM bytes a channel is built from (kept out of repr: the key is a secret)."""

    root_certificates: bytes = dataclasses.field(repr=False)
    private_key: bytes = dataclasses.field(repr=False)
    certificate_chain: bytes = dataclasses.field(repr=False)


class CertificateFiles:
    """The CA, certificate and key files of a channel, and whether they changed."""

    def __init__(
        self,
        ca_file: str | os.PathLike[str],
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        *,
        check_interval: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Remember the paths; ``check_interval`` None turns reloading off."""
        if check_interval is not None and not check_interval >= 0:
            raise ValueError("certificate_check_interval must be >= 0 seconds or None")
        self._paths = (Path(ca_file), Path(cert_file), Path(key_file))
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._signature: _Signature | None = None
        self._next_check = 0.0
        #: How many times the files were loaded (the first load included).
        self.loads = 0

    def _stat(self) -> _Signature:
        out = []
        for path in self._paths:
            st = path.stat()  # follows symlinks: a swapped ..data link shows as a new inode
            out.append((st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def load(self) -> TlsMaterial:
        """Read the three files; retried while they change under the read (a torn rotation).

        Raises:
            OSError: if a file cannot be read.
        """
        for _ in range(5):
            before = self._stat()
            ca, cert, key = (path.read_bytes() for path in self._paths)
            after = self._stat()
            if before == after:
                break
            time.sleep(0.05)
        with self._lock:
            self._signature = after
            self._next_check = self._clock() + (self._interval or 0.0)
            self.loads += 1
        return TlsMaterial(root_certificates=ca, private_key=key, certificate_chain=cert)

    def changed(self) -> bool:
        """True when the files differ from the last load (checked at most every interval).

        A file that cannot be stat'ed right now (mid-rotation) counts as unchanged: the channel
        keeps its current certificates and looks again later.
        """
        if self._interval is None:
            return False
        now = self._clock()
        with self._lock:
            if now < self._next_check:
                return False
            self._next_check = now + self._interval
            previous = self._signature
        try:
            return self._stat() != previous
        except OSError:
            return False
