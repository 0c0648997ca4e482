-- Zumik Secrets, PostgreSQL schema 0007: the audit outbox.

-- An audit event written in the same transaction as the change it records (issue 24): the
-- change and its event are both there or both absent after any crash. The audit writer of any
-- replica moves rows into the tenant's hash chain (audit_events) and deletes them in one
-- transaction (rows taken FOR UPDATE SKIP LOCKED), so each event is chained exactly once.
-- Columns as in audit_events, without the chain fields.
CREATE TABLE audit_outbox (
    id            BIGSERIAL   PRIMARY KEY,
    tenant        TEXT        NOT NULL,
    event_id      TEXT        NOT NULL UNIQUE,
    time          TIMESTAMPTZ NOT NULL,
    actor         TEXT        NOT NULL,
    actor_subject TEXT        NOT NULL,
    action        TEXT        NOT NULL,
    target        TEXT        NOT NULL,
    outcome       TEXT        NOT NULL,
    reason        TEXT        NOT NULL,
    trace_id      TEXT        NOT NULL,
    attributes    TEXT        NOT NULL
);
