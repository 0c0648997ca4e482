-- Zumik Secrets, PostgreSQL schema v2: the tamper-evident audit log.
-- One hash chain per tenant (tenant '-' is the service-wide chain). Appends lock the tenant's
-- audit_heads row (INSERT ... ON CONFLICT DO UPDATE ... RETURNING takes the row lock) for the
-- whole insert transaction, so several processes appending to one tenant produce one gapless
-- chain. Hashes are SHA-256 (32 bytes); see core/audit_chain.py for the canonical form.

CREATE TABLE audit_heads (
    tenant      text        NOT NULL PRIMARY KEY,
    seq         bigint      NOT NULL CHECK (seq >= 0),
    hash        bytea       NOT NULL CHECK (length(hash) = 32),
    updated_at  timestamptz NOT NULL
);

CREATE TABLE audit_events (
    tenant         text        NOT NULL,
    seq            bigint      NOT NULL CHECK (seq >= 1),
    event_id       text        NOT NULL UNIQUE,
    time           timestamptz NOT NULL,
    actor          text        NOT NULL,
    actor_subject  text        NOT NULL,
    action         text        NOT NULL,
    target         text        NOT NULL,
    outcome        text        NOT NULL,
    reason         text        NOT NULL,
    trace_id       text        NOT NULL,
    attributes     text        NOT NULL,  -- JSON object of strings, keys sorted
    prev_hash      bytea       NOT NULL,
    hash           bytea       NOT NULL,
    PRIMARY KEY (tenant, seq)
);
CREATE INDEX audit_events_by_time ON audit_events (tenant, time);
CREATE INDEX audit_events_by_action ON audit_events (tenant, action, seq);

CREATE TABLE audit_checkpoints (
    tenant     text        NOT NULL,
    seq        bigint      NOT NULL CHECK (seq >= 0),
    head_hash  bytea       NOT NULL,
    time       timestamptz NOT NULL,
    kid        text        NOT NULL,
    signature  bytea       NOT NULL,
    PRIMARY KEY (tenant, seq)
);
