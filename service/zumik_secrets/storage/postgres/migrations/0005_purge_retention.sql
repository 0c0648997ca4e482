-- Zumik Secrets, PostgreSQL schema 0005: per-tenant retention settings, purge jobs and receipts.

-- Retention settings, in whole seconds; NULL means "the service default".
ALTER TABLE tenant_settings
    ADD COLUMN audit_retention_s bigint
        CHECK (audit_retention_s IS NULL OR audit_retention_s > 0),
    ADD COLUMN revoked_key_retention_s bigint
        CHECK (revoked_key_retention_s IS NULL OR revoked_key_retention_s >= 0),
    ADD COLUMN session_absolute_lifetime_s bigint
        CHECK (session_absolute_lifetime_s IS NULL OR session_absolute_lifetime_s > 0);

-- One row per purge: its phase advances in the same transaction as the phase's work, so a purge
-- interrupted at any point (even kill -9) resumes from the last committed phase. At most one
-- unfinished purge per target. destroyed: JSON object kind -> count; shredded: JSON array of
-- [project, purpose, version, state_before] of the data-key versions the shred phase destroyed;
-- audit_retention_s: the tenant's audit retention when the purge began (its settings go).
CREATE TABLE purge_jobs (
    receipt_id  text        NOT NULL PRIMARY KEY,
    tenant_id   text        NOT NULL,
    project_id  text,
    target      text        NOT NULL,
    phase       text        NOT NULL CHECK (phase IN ('started', 'shredded', 'deleted', 'done')),
    destroyed   text        NOT NULL,
    shredded    text        NOT NULL,
    audit_retention_s bigint NOT NULL CHECK (audit_retention_s > 0),
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE UNIQUE INDEX purge_jobs_one_open ON purge_jobs (target) WHERE phase <> 'done';
CREATE INDEX purge_jobs_by_target ON purge_jobs (target, started_at);

-- Signed receipts, kept after the purge (they name what was destroyed, never a secret).
CREATE TABLE purge_receipts (
    tenant_id       text        NOT NULL,
    receipt_id      text        NOT NULL,
    target          text        NOT NULL,
    statement       bytea       NOT NULL,
    kid             text        NOT NULL,
    signature       bytea       NOT NULL,
    audit_sequence  bigint      NOT NULL CHECK (audit_sequence >= 1),
    purge_time      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, receipt_id)
);
CREATE INDEX purge_receipts_by_target ON purge_receipts (target, purge_time);
