"""The purge fence: nothing is created in a tenant or project once a purge of it has begun.

A purge job (``purge_jobs``, aggregates/purge.py) is a tombstone for its scope, forever: a
tenant purge (``project_id`` NULL) covers every project of the tenant. Every insert that
creates something inside a scope (API keys, sessions, sealed secrets, data keys, handles, the
fingerprint key schedule; tenant-level: customer keys, tenant settings) checks, in its own
transaction, that no job covers the scope, and refuses with FAILED_PRECONDITION
``SCOPE_PURGED`` otherwise. The claim tombstones of the authorization layer are fed by the
change feed, so they cannot stop a create authorised just before the purge began: this check
can.

Why it is atomic with the purge:

- SQLite: every write transaction is ``BEGIN IMMEDIATE``, so a create's check and insert run
  wholly before or wholly after ``create_job``'s transaction.
- PostgreSQL: a create first takes a shared transaction-scoped advisory lock on
  :func:`lock_key` (its own statement), then checks and inserts; ``create_job`` and
  ``delete_rows`` take the same lock exclusively before their statements. A create holding the
  shared lock commits before ``create_job`` can commit (so its row exists before ``delete_rows``
  and is deleted and counted in the receipt); a create that gets the lock after ``create_job``
  committed starts its check after that commit, and READ COMMITTED gives the check a snapshot
  that sees the job. ``delete_rows`` also waits for creates in flight, so its counts are the
  rows it really deleted and nothing of the scope is inserted after them.
"""

from __future__ import annotations

from typing import Any

from zumik_secrets.core import errors
from zumik_secrets.storage.sql.kernel import Connection, Kernel

#: ``WHERE`` condition: no purge job covers (tenant, project); parameters :func:`params`.
NOT_PURGED = (
    "NOT EXISTS (SELECT 1 FROM purge_jobs WHERE tenant_id = %s"
    " AND (project_id IS NULL OR project_id = %s))"
)


def lock_key(tenant_id: str) -> str:
    """The advisory-lock key creates (shared) and purges (exclusive) of a tenant take."""
    return f"purge-fence:{tenant_id}"


def params(tenant_id: str, project_id: str | None) -> list[Any]:
    """The parameters of :data:`NOT_PURGED`; ``project_id`` None or '' (a tenant-level row,
    such as a handle minted without a project) is covered only by a tenant purge."""
    return [tenant_id, project_id or None]


def scope_purged() -> errors.FailedPrecondition:
    """The refusal of a create in a purged scope."""
    return errors.FailedPrecondition(
        "the tenant or project was purged; nothing can be created in it again",
        reason="SCOPE_PURGED",
    )


def check(db: Kernel, conn: Connection, tenant_id: str, project_id: str | None) -> None:
    """Refuse a create in a purged scope; call it in the creating transaction, before the
    insert (it takes the shared fence lock first, see the module docstring).

    Raises:
        FailedPrecondition: reason ``SCOPE_PURGED``.
    """
    db.lock_key(conn, lock_key(tenant_id), shared=True)
    row = conn.execute(f"SELECT 1 WHERE {NOT_PURGED}", params(tenant_id, project_id)).fetchone()
    if row is None:
        raise scope_purged()


def exclude(db: Kernel, conn: Connection, tenant_id: str) -> None:
    """Wait for the tenant's creates in flight and keep new ones out until ``conn`` commits
    (a purge's ``create_job`` and ``delete_rows``)."""
    db.lock_key(conn, lock_key(tenant_id))
