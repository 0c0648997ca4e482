"""What a secret looks like: our own formats, PEM private keys and long high-entropy strings.

Two users share these rules: the log redaction filter (last line of defence, rewrites matches)
and the audit log (AppendEvent refuses values that match; service-generated events have matches
replaced). Keeping them here, in the pure core, means both always agree.

Rules, in the order :func:`secret_kind` applies them:

1. Our formats (:data:`SECRET_PATTERNS`): API keys ``zk_<env>_<id>_<secret><check>``, session
   tokens ``zs_<base64url>``, JWS-shaped claims ``eyJ...``, keyring JSON ``"key": "..."``.
2. PEM private keys: ``-----BEGIN ... PRIVATE KEY-----`` (RSA, EC, OPENSSH, ENCRYPTED...).
3. Hex: a run of 32 or more hex digits (bounded by non-alphanumerics) mixing digits and letters:
   128 bits or more, the size of a key or a token.
4. Base64/base62/base64url: a run of 32 or more characters of ``[A-Za-z0-9+/=_-]`` that, once
   handle-shaped parts (``<kind>_<22 base62>`` standing alone, which are public identifiers) are
   removed, still has 32 or more characters, at least two of the classes upper/lower/digit, and
   a Shannon entropy of at least :data:`MIN_ENTROPY_BITS` bits per character. Random base64 of
   that length measures about 4.5-4.9 bits per character; resource names, dotted identifiers and
   snake_case words measure under 4.0, so they pass. The rule is statistical: a random 32-byte
   base64url string measures under the bound by chance about once in 300,000 (2 in 600,000
   draws) and is missed; it is the last line of defence, behind never putting secrets there.

Linear time. These rules run over attacker-controlled text (resource names, method paths,
metadata), so every pattern is written so that Python's backtracking engine does a bounded
amount of work per input character: no pattern can restart a long scan from each position of a
run (the JWS rule starts only at the start of a run, and its prefix is an atomic group), and
every unbounded repetition is followed by a character it cannot match. The entropy rules work on
maximal runs found by a single pass. ``tests/unit/test_secret_patterns_linear.py`` runs every
pattern and :func:`redact` over adversarial inputs at :data:`MAX_SCAN_CHARS` and twice that, and
checks that the cost grows linearly. Callers still bound what they scan (:func:`bounded`).
"""

from __future__ import annotations

import math
import re
from collections import Counter

#: The most characters any caller should hand the detector at once (the longest value an
#: audit event, log field or span attribute keeps, with room around it). The detector is linear
#: time anyway; this is the size the linearity test measures at.
MAX_SCAN_CHARS = 16 * 1024

#: Patterns of our secret formats. The log filter replaces matches with ``[REDACTED]``.
#:
#: The JWS rule anchors at the start of a run of base64url characters (a look-behind) and finds
#: the first ``eyJ`` of the run inside an atomic group, so a run such as ``"eyJ" * n`` is scanned
#: once, not once per ``eyJ`` (the former ``eyJ[...]{8,}\.`` search was quadratic there). It
#: matches exactly the same texts; a match may start a few characters earlier (at the run's start).
SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"zk_[a-z]{2,8}_[0-9A-Za-z]{22}_[0-9A-Za-z]{20,}+"),  # API key
    re.compile(r"zs_[A-Za-z0-9_-]{40,}+"),  # session token
    re.compile(
        r"(?<![A-Za-z0-9_-])(?>[A-Za-z0-9_-]*?eyJ)"
        r"[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+"
    ),  # JWS
    re.compile(r'"key"\s*+:\s*+"[A-Za-z0-9_-]{40,}+"'),  # keyring JSON entry
)
_FORMAT_KINDS = ("api_key", "session_token", "jws", "keyring_key")

# `[A-Z0-9 ]*` may give back characters to find `PRIVATE KEY`, but only within one header line
# (it cannot cross `-`), and the pattern can only start at `-----BEGIN `: linear overall.
PEM_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")

MIN_SECRET_RUN = 32
"""Shortest run of encoded characters the entropy rules consider (128 bits of hex)."""
MIN_ENTROPY_BITS = 4.2
"""Bits per character from which a long base64-alphabet run counts as random."""

_HEX_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9A-Fa-f]{32,}+(?![0-9A-Za-z])")
_B64_RUN = re.compile(r"[A-Za-z0-9+/=_-]{32,}+")
# A handle counts as one only where it stands alone: not glued to other base64-alphabet
# characters (a random base64url token can contain `feko_<22 alphanumerics>` followed by `-`;
# stripping that as a "handle" let a real 32-byte token through, found by the random test).
_HANDLE = re.compile(r"(?<![0-9A-Za-z_+=-])[a-z]{2,8}_[0-9A-Za-z]{22}(?![0-9A-Za-z_+=-])")


def shannon_bits(text: str) -> float:
    """Shannon entropy of the character distribution of ``text``, in bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _classes(text: str) -> int:
    return (
        any(ch.isupper() for ch in text)
        + any(ch.islower() for ch in text)
        + any(ch.isdigit() for ch in text)
    )


def _random_run(run: str) -> bool:
    stripped = _HANDLE.sub("", run)
    if len(stripped) < MIN_SECRET_RUN:
        return False
    return _classes(stripped) >= 2 and shannon_bits(stripped) >= MIN_ENTROPY_BITS


def secret_kind(value: str) -> str | None:
    """Which kind of secret ``value`` looks like, or None if it looks like none.

    Returns:
        ``api_key``, ``session_token``, ``jws``, ``keyring_key``, ``pem_private_key``,
        ``hex`` or ``high_entropy``; None when the value looks harmless.
    """
    for kind, pattern in zip(_FORMAT_KINDS, SECRET_PATTERNS, strict=True):
        if pattern.search(value):
            return kind
    if PEM_PRIVATE_KEY.search(value):
        return "pem_private_key"
    if len(value) < MIN_SECRET_RUN:
        return None
    for match in _HEX_RUN.finditer(value):
        run = match.group(0)
        if any(ch.isdigit() for ch in run) and any(ch.isalpha() for ch in run):
            return "hex"
    for match in _B64_RUN.finditer(value):
        if _random_run(match.group(0)):
            return "high_entropy"
    return None


def looks_like_secret(value: str) -> bool:
    """Whether :func:`secret_kind` finds anything in ``value``."""
    return secret_kind(value) is not None


def bounded(value: str, limit: int, marker: str = "\u2026") -> str:
    """``value`` cut to at most ``limit`` characters (the cut marked), before anything scans,
    stores, logs or keys a cache on it."""
    if len(value) <= limit:
        return value
    return value[: max(0, limit - len(marker))] + marker


REDACTED = "[REDACTED]"

# One alternation, one pass per text. The extra alternative catches keyring JSON that was itself
# embedded in a JSON string (escaped quotes). Every alternative is linear (see the module doc).
_ANY_SECRET = re.compile(
    "|".join(
        [f"(?:{p.pattern})" for p in SECRET_PATTERNS]
        + [r'\\"key\\"\s*+:\s*+\\"[A-Za-z0-9_-]{40,}+\\"']
    )
)
# Every alternative contains one of these; most texts contain none, and `in` is far cheaper
# than running the regex.
_TRIGGERS = ("zk_", "zs_", "eyJ", "key")


def redact(text: str, replacement: str = REDACTED) -> str:
    """Replace every substring of ``text`` in one of our secret formats (linear time)."""
    if not any(t in text for t in _TRIGGERS):
        return text
    return _ANY_SECRET.sub(replacement, text)
