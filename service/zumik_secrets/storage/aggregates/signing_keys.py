"""Service signing keys (:class:`~zumik_secrets.storage.ports.SigningKeyStore`)."""

# The column list is a module constant, never input: the f-strings cannot inject.
# ruff: noqa: S608

from __future__ import annotations

from datetime import datetime

from zumik_secrets.storage.records import SigningKeyRecord
from zumik_secrets.storage.sql.dialect import Dialect
from zumik_secrets.storage.sql.kernel import Connection, Kernel, Row

_COLS = (
    "kid, purpose, public_key, wrapped_private_key, keyring_version, state, created_at,"
    " retire_after"
)


def _signing_key(d: Dialect, row: Row) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=row[0],
        purpose=row[1],
        public_key=bytes(row[2]),
        wrapped_private_key=bytes(row[3]),
        keyring_version=row[4],
        state=row[5],
        created_at=d.time_out(row[6]),
        retire_after=d.opt_time_out(row[7]),
    )


class SqlSigningKeyStore:
    """:class:`~zumik_secrets.storage.ports.SigningKeyStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def add(self, rec: SigningKeyRecord) -> None:
        with self._db.transaction() as conn:
            self._insert(conn, rec)

    def add_first(self, rec: SigningKeyRecord) -> bool:
        with self._db.transaction() as conn:
            self._db.lock_key(conn, "zumik-signing-key/" + rec.purpose)
            active = conn.execute(
                "SELECT kid FROM signing_keys WHERE purpose = %s AND state = 'active' LIMIT 1",
                (rec.purpose,),
            ).fetchone()
            if active is not None:
                return False
            self._insert(conn, rec)
            return True

    def _insert(self, conn: Connection, rec: SigningKeyRecord) -> None:
        conn.execute(
            f"INSERT INTO signing_keys ({_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                rec.kid,
                rec.purpose,
                rec.public_key,
                rec.wrapped_private_key,
                rec.keyring_version,
                rec.state,
                self._d.time_in(rec.created_at),
                self._d.opt_time_in(rec.retire_after),
            ),
        )
        self._db.record_changes(conn, "signing_key", [rec.kid])

    def list(self, purpose: str) -> list[SigningKeyRecord]:
        rows = self._db.all(
            f"SELECT {_COLS} FROM signing_keys WHERE purpose = %s ORDER BY created_at, kid",
            (purpose,),
        )
        return [_signing_key(self._d, r) for r in rows]

    def set_state(
        self, kid: str, state: str, retire_after: datetime | None
    ) -> SigningKeyRecord | None:
        with self._db.transaction() as conn:
            row = conn.execute(
                "UPDATE signing_keys SET state = %s, retire_after = %s WHERE kid = %s"
                f" RETURNING {_COLS}",
                (state, self._d.opt_time_in(retire_after), kid),
            ).fetchone()
            if row is None:
                return None
            self._db.record_changes(conn, "signing_key", [kid])
            return _signing_key(self._d, row)

    def replace_wrapped(
        self, kid: str, old_wrapped: bytes, new_wrapped: bytes, keyring_version: int
    ) -> bool:
        with self._db.change() as conn:
            cur = conn.execute(
                "UPDATE signing_keys SET wrapped_private_key = %s, keyring_version = %s"
                " WHERE kid = %s AND wrapped_private_key = %s",
                (new_wrapped, keyring_version, kid, old_wrapped),
            )
            return cur.rowcount == 1
