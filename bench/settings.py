"""What one invocation runs (``Settings``) and its progress line: shared by every bench section.

The sections (scenarios, OpenBao peers, scale, architecture, profiles) import these from here and
``bench.cli`` imports the sections, so the imports run one way only
(tests/unit/test_bench_imports.py).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


@dataclass
class Settings:
    """The knobs of one invocation."""

    quick: bool
    scenarios: list[str]
    concurrency: list[int]
    warmup: float
    duration: float
    backend: str
    generators: int
    generator: str
    channels: int
    server_procs: int
    peer: bool
    scale: bool
    scale_rows: int
    arch: bool
    profile: bool
    gateway: bool = False
    server_env: dict[str, str] = field(default_factory=dict)
    channel_sweep: list[int] = field(default_factory=list)
    scale_rounds: int = 3

    @property
    def peer_concurrency(self) -> list[int]:
        """Concurrencies of the OpenBao peer runs: all of them, quick only the ratio's c=64."""
        if not self.quick:
            return list(self.concurrency)
        return [64] if 64 in self.concurrency else [max(self.concurrency)]


class Progress:
    """A one-line progress indicator on stderr."""

    def __init__(self, total: int) -> None:
        """Start counting ``total`` steps."""
        self.total = max(1, total)
        self.done = 0
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        """Show the step about to run."""
        self.done += 1
        elapsed = time.monotonic() - self.started
        line = f"[{self.done:>3}/{self.total}] {elapsed:6.0f}s  {text}"
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        """Finish the line."""
        if sys.stderr.isatty():
            sys.stderr.write("\n")
