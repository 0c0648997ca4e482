-- Zumik Secrets, PostgreSQL schema 0004: fingerprint-key destruction schedule, opaque handles.

-- A fingerprint-key version (data_keys, purpose 'fingerprint') to destroy when its rotation
-- overlap window ends. The key itself stays in data_keys, only wrapped; this row only says when
-- to crypto-shred it. lease_until lets one replica's sweeper claim the row at a time; the row is
-- deleted once the version is destroyed and the linkage_broken audit event is durable.
CREATE TABLE fingerprint_key_schedule (
    tenant_id    text        NOT NULL,
    project_id   text        NOT NULL,
    version      bigint      NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
    destroy_at   timestamptz NOT NULL,
    lease_until  timestamptz,
    PRIMARY KEY (tenant_id, project_id, version)
);
CREATE INDEX fingerprint_key_schedule_due ON fingerprint_key_schedule (destroy_at);

-- Handles are random (128 bits), never derived from the reference; unique per tenant.
CREATE TABLE handles (
    tenant_id   text        NOT NULL,
    handle      text        NOT NULL CHECK (length(handle) BETWEEN 25 AND 31),
    kind        text        NOT NULL CHECK (length(kind) BETWEEN 2 AND 8),
    reference   text        NOT NULL CHECK (length(reference) BETWEEN 1 AND 256),
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, handle)
);
