-- Zumik Secrets, PostgreSQL schema 0003: data keys, sealed secrets, customer-managed keys.

-- One row per version of a (tenant, project, purpose) data key. The key is stored only wrapped
-- (by the master keyring or the tenant's own KMS key); destroying a version deletes the wrapped
-- key (crypto-shredding), keeping the row so the version number is never reused.
CREATE TABLE data_keys (
    tenant_id     text        NOT NULL,
    project_id    text        NOT NULL,
    purpose       text        NOT NULL CHECK (purpose IN ('seal', 'fingerprint')),
    version       bigint      NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
    state         text        NOT NULL CHECK (state IN ('primary', 'enabled', 'destroyed')),
    wrapped_key   bytea,
    wrapped_by    text        NOT NULL CHECK (wrapped_by IN ('keyring', 'customer')),
    created_at    timestamptz NOT NULL,
    destroyed_at  timestamptz,
    PRIMARY KEY (tenant_id, project_id, purpose, version),
    CHECK ((state = 'destroyed') = (wrapped_key IS NULL))
);
-- At most one primary per triple: two replicas racing to create version 1 cannot both win.
CREATE UNIQUE INDEX data_keys_one_primary ON data_keys (tenant_id, project_id, purpose)
    WHERE state = 'primary';

CREATE TABLE sealed_secrets (
    secret_id         text        NOT NULL PRIMARY KEY,
    seq               bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    tenant_id         text        NOT NULL,
    project_id        text        NOT NULL,
    display_name      text        NOT NULL,
    metadata          jsonb       NOT NULL,
    version           bigint      NOT NULL CHECK (version >= 1),
    data_key_version  bigint      NOT NULL CHECK (data_key_version >= 1),
    size_bytes        integer     NOT NULL CHECK (size_bytes >= 1),
    ciphertext        bytea       NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX sealed_secrets_by_project ON sealed_secrets (tenant_id, project_id, seq);
CREATE INDEX sealed_secrets_by_data_key ON sealed_secrets (tenant_id, project_id, data_key_version);

-- The access token is wrapped by the master keyring; no column holds it in plaintext.
CREATE TABLE customer_keys (
    tenant_id           text        NOT NULL PRIMARY KEY,
    address             text        NOT NULL,
    mount               text        NOT NULL,
    key_name            text        NOT NULL,
    wrapped_token       bytea       NOT NULL,
    ca_certificate_pem  text        NOT NULL,
    updated_at          timestamptz NOT NULL
);

-- Relax the change-feed kind check: the application's CHANGE_KINDS is the list of kinds; the
-- database only insists on a short lower-case word, so a new kind needs no migration.
ALTER TABLE changes DROP CONSTRAINT IF EXISTS changes_kind_check;
ALTER TABLE changes ADD CONSTRAINT changes_kind_check CHECK (kind ~ '^[a-z_]{1,32}$');
