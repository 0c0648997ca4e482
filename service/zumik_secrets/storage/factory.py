"""Open a store from a URL, and redact URLs for logs."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from zumik_secrets.storage.ports import Store

_SQLITE_PREFIX = "sqlite:///"
_PG_SCHEMES = ("postgresql://", "postgres://")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


def open_store(url: str, **options: int | float) -> Store:
    """Open (but do not migrate) the store named by ``url``.

    Args:
        url: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, or a
            ``postgresql://`` / ``postgres://`` URL (libpq syntax, e.g. ``?sslmode=require``).
        **options: Adapter tuning: ``busy_timeout_ms`` for SQLite; ``min_size``, ``max_size``,
            ``connect_timeout``, ``pool_timeout`` for PostgreSQL.

    Returns:
        The store. Call ``migrate()`` before use and ``close()`` at shutdown.

    Raises:
        ValueError: The URL names no supported backend, or no usable SQLite path; the message
            shows the URL with any password hidden.
        Unavailable: The SQLite file cannot be opened.
    """
    if url.startswith(_SQLITE_PREFIX):
        raw = url[len(_SQLITE_PREFIX) :]
        if "?" in raw or "#" in raw:
            raise ValueError(f"sqlite URL takes no query or fragment: {redact_url(url)}")
        path = unquote(raw)
        if not path or path == ":memory:" or path.endswith("/"):
            raise ValueError(
                f"sqlite URL must name a database file, e.g. sqlite:///var/zumik.db: {url}"
            )
        from zumik_secrets.storage.sqlite.store import SqliteStore

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return SqliteStore(path, busy_timeout_ms=int(options.pop("busy_timeout_ms", 5000)))
    if url.startswith(_PG_SCHEMES):
        # Imported lazily so a SQLite-only deployment never needs psycopg importable.
        from zumik_secrets.storage.postgres.store import PgStore

        return PgStore(
            url,
            min_size=int(options.pop("min_size", 1)),
            max_size=int(options.pop("max_size", 16)),
            connect_timeout=int(options.pop("connect_timeout", 3)),
            pool_timeout=float(options.pop("pool_timeout", 3.0)),
        )
    raise ValueError(
        "unsupported storage URL (use sqlite:///path/to.db or postgresql://...): " + redact_url(url)
    )


def is_sqlite_url(url: str) -> bool:
    """``url`` names the embedded SQLite store (a single writer: one server process is enough)."""
    return url.startswith(_SQLITE_PREFIX)


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, fit for logs and error messages.

    Handles ``scheme://user:password@host/...``, ``?password=...`` query parameters and libpq
    ``key=value`` strings (``password=...``).
    """
    if "://" not in url:
        return _KV_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    changed = False
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
            changed = True
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs],
                safe="*",
            )
            changed = True
    if not changed:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
