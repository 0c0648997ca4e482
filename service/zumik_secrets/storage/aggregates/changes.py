"""The change feed other replicas read to invalidate their caches
(:class:`~zumik_secrets.storage.ports.ChangeFeed`).

Changes are appended by the kernels (``Kernel.record_changes``) inside the transaction of the
change they record; pushing (LISTEN/NOTIFY) is the PostgreSQL kernel's too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from zumik_secrets.storage.ports import ChangeListener
from zumik_secrets.storage.records import ChangeRecord
from zumik_secrets.storage.sql.kernel import Kernel, Row


class SqlChangeFeed:
    """:class:`~zumik_secrets.storage.ports.ChangeFeed` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def latest_seq(self) -> int:
        # max() over the primary key is one b-tree descent.
        row = self._db.one("SELECT coalesce(max(seq), 0) FROM changes")
        return 0 if row is None else int(row[0])

    def since(self, seq: int, limit: int = 1000) -> list[ChangeRecord]:
        rows = self._db.all(
            "SELECT seq, kind, entity_id, at FROM changes WHERE seq > %s ORDER BY seq LIMIT %s",
            (seq, limit),
        )
        return [self._record(r) for r in rows]

    def at(self, seq: int) -> ChangeRecord | None:
        row = self._db.one("SELECT seq, kind, entity_id, at FROM changes WHERE seq = %s", (seq,))
        return None if row is None else self._record(row)

    def latest(self) -> ChangeRecord | None:
        row = self._db.one("SELECT seq, kind, entity_id, at FROM changes ORDER BY seq DESC LIMIT 1")
        return None if row is None else self._record(row)

    def _record(self, row: Row) -> ChangeRecord:
        return ChangeRecord(int(row[0]), row[1], row[2], self._d.time_out(row[3]))

    def prune_before(self, cutoff: datetime) -> int:
        with self._db.change() as conn:
            return conn.execute(
                "DELETE FROM changes WHERE at < %s", (self._d.time_in(cutoff),)
            ).rowcount

    def listen(self, callback: Callable[[], None]) -> ChangeListener | None:
        """See :meth:`Kernel.listen` (SQLite cannot push: None, poll :meth:`latest_seq`)."""
        return self._db.listen(callback)
