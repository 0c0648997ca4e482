-- Zumik Secrets, SQLite schema 0007: the audit outbox.

-- An audit event written in the same transaction as the change it records (issue 24): the
-- change and its event are both there or both absent after any crash. The audit writer moves
-- rows into the tenant's hash chain (audit_events) and deletes them in one transaction, so each
-- event is chained exactly once. Columns as in audit_events, without the chain fields.
CREATE TABLE audit_outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        TEXT    NOT NULL,
    event_id      TEXT    NOT NULL UNIQUE,
    time          INTEGER NOT NULL,
    actor         TEXT    NOT NULL,
    actor_subject TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    trace_id      TEXT    NOT NULL,
    attributes    TEXT    NOT NULL
) STRICT;
