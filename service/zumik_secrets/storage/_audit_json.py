"""How both adapters store an audit event's attributes: a JSON object with sorted keys."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence


def attributes_json(attributes: Sequence[tuple[str, str]]) -> str:
    """Attributes as stored: a JSON object with sorted keys."""
    if isinstance(attributes, tuple):
        return _attributes_json(attributes)
    return _encode(attributes)


def _encode(attributes: Sequence[tuple[str, str]]) -> str:
    return json.dumps(dict(attributes), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@functools.lru_cache(maxsize=1024)
def _attributes_json(attributes: tuple[tuple[str, str], ...]) -> str:
    # Service events repeat the same few attribute sets ({"result": "VALID"}, versions...);
    # they hold no secrets (sanitized before they are drafted).
    return _encode(attributes)


def attributes_from_json(text: str) -> tuple[tuple[str, str], ...]:
    """Inverse of :func:`attributes_json` (values coerced to str, keys sorted)."""
    data = json.loads(text)
    return tuple(sorted((str(k), str(v)) for k, v in data.items()))
