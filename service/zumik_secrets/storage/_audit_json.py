"""How both adapters store an audit event's attributes: a JSON object with sorted keys."""

from __future__ import annotations

import json
from collections.abc import Sequence


def attributes_json(attributes: Sequence[tuple[str, str]]) -> str:
    """Attributes as stored: a JSON object with sorted keys."""
    return json.dumps(dict(attributes), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def attributes_from_json(text: str) -> tuple[tuple[str, str], ...]:
    """Inverse of :func:`attributes_json` (values coerced to str, keys sorted)."""
    data = json.loads(text)
    return tuple(sorted((str(k), str(v)) for k, v in data.items()))
