-- Zumik Secrets, SQLite schema 0003: data keys, sealed secrets, customer-managed keys.

-- One row per version of a (tenant, project, purpose) data key. The key is stored only wrapped
-- (by the master keyring or the tenant's own KMS key); destroying a version deletes the wrapped
-- key (crypto-shredding), keeping the row so the version number is never reused.
CREATE TABLE data_keys (
    tenant_id     TEXT    NOT NULL,
    project_id    TEXT    NOT NULL,
    purpose       TEXT    NOT NULL CHECK (purpose IN ('seal', 'fingerprint')),
    version       INTEGER NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
    state         TEXT    NOT NULL CHECK (state IN ('primary', 'enabled', 'destroyed')),
    wrapped_key   BLOB,
    wrapped_by    TEXT    NOT NULL CHECK (wrapped_by IN ('keyring', 'customer')),
    created_at    INTEGER NOT NULL,
    destroyed_at  INTEGER,
    PRIMARY KEY (tenant_id, project_id, purpose, version),
    CHECK ((state = 'destroyed') = (wrapped_key IS NULL))
) STRICT;
-- At most one primary per triple: two replicas racing to create version 1 cannot both win.
CREATE UNIQUE INDEX data_keys_one_primary ON data_keys (tenant_id, project_id, purpose)
    WHERE state = 'primary';

CREATE TABLE sealed_secrets (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    secret_id         TEXT    NOT NULL UNIQUE,
    tenant_id         TEXT    NOT NULL,
    project_id        TEXT    NOT NULL,
    display_name      TEXT    NOT NULL,
    metadata          TEXT    NOT NULL,
    version           INTEGER NOT NULL CHECK (version >= 1),
    data_key_version  INTEGER NOT NULL CHECK (data_key_version >= 1),
    size_bytes        INTEGER NOT NULL CHECK (size_bytes >= 1),
    ciphertext        BLOB    NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) STRICT;
CREATE INDEX sealed_secrets_by_project ON sealed_secrets (tenant_id, project_id, seq);
CREATE INDEX sealed_secrets_by_data_key ON sealed_secrets (tenant_id, project_id, data_key_version);

-- The access token is wrapped by the master keyring; no column holds it in plaintext.
CREATE TABLE customer_keys (
    tenant_id           TEXT    NOT NULL PRIMARY KEY,
    address             TEXT    NOT NULL,
    mount               TEXT    NOT NULL,
    key_name            TEXT    NOT NULL,
    wrapped_token       BLOB    NOT NULL,
    ca_certificate_pem  TEXT    NOT NULL,
    updated_at          INTEGER NOT NULL
) STRICT;

-- Relax the change-feed kind check: the application's CHANGE_KINDS is the list of kinds; the
-- database only insists on a short lower-case word, so a new kind needs no table rebuild.
-- SQLite cannot alter a CHECK constraint, so the table is rebuilt (keeping seq and its counter).
CREATE TABLE changes_new (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL
               CHECK (length(kind) BETWEEN 1 AND 32 AND kind NOT GLOB '*[^a-z_]*'),
    entity_id  TEXT    NOT NULL,
    at         INTEGER NOT NULL
) STRICT;
INSERT INTO changes_new (seq, kind, entity_id, at) SELECT seq, kind, entity_id, at FROM changes;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'changes_new', seq FROM sqlite_sequence WHERE name = 'changes'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'changes_new');
UPDATE sqlite_sequence SET seq = max(seq, (SELECT coalesce(max(s.seq), 0) FROM sqlite_sequence s
    WHERE s.name = 'changes')) WHERE name = 'changes_new';
DROP TABLE changes;
ALTER TABLE changes_new RENAME TO changes;
