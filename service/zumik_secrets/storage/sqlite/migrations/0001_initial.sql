-- Zumik Secrets, SQLite schema v1.
-- Times are INTEGER microseconds since the Unix epoch, UTC (exact, sortable, cheap to compare).
-- Bytes are BLOB; scope lists are JSON arrays of strings in TEXT.
-- STRICT tables (SQLite >= 3.37) reject values of the wrong type.

CREATE TABLE tenant_settings (
    tenant_id       TEXT    NOT NULL PRIMARY KEY,
    telemetry_mode  TEXT    NOT NULL CHECK (telemetry_mode IN ('default', 'rich')),
    updated_at      INTEGER NOT NULL
) STRICT;

CREATE TABLE signing_keys (
    kid                  TEXT    NOT NULL PRIMARY KEY,
    purpose              TEXT    NOT NULL CHECK (purpose IN ('claims', 'audit')),
    public_key           BLOB    NOT NULL,
    wrapped_private_key  BLOB    NOT NULL,
    keyring_version      INTEGER NOT NULL,
    state                TEXT    NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    created_at           INTEGER NOT NULL,
    retire_after         INTEGER
) STRICT;
CREATE INDEX signing_keys_by_purpose ON signing_keys (purpose, created_at);

-- AUTOINCREMENT: a seq is never reused, even after deletes, so page cursors stay valid.
CREATE TABLE api_keys (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id         TEXT    NOT NULL UNIQUE,
    tenant_id      TEXT    NOT NULL,
    project_id     TEXT    NOT NULL,
    display_name   TEXT    NOT NULL,
    env            TEXT    NOT NULL,
    masked_prefix  TEXT    NOT NULL,
    salt           BLOB    NOT NULL,
    secret_hash    BLOB    NOT NULL,
    scopes         TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('active', 'revoked')),
    created_at     INTEGER NOT NULL,
    expire_time    INTEGER,
    revoke_time    INTEGER,
    last_used_at   INTEGER,
    rotated_from   TEXT
) STRICT;
CREATE INDEX api_keys_by_project ON api_keys (tenant_id, project_id, seq);
CREATE INDEX api_keys_revoked ON api_keys (revoke_time) WHERE state = 'revoked';
CREATE INDEX api_keys_expiring ON api_keys (expire_time) WHERE expire_time IS NOT NULL;

CREATE TABLE sessions (
    seq                   INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id            TEXT    NOT NULL UNIQUE,
    token_hash            BLOB    NOT NULL UNIQUE,
    tenant_id             TEXT    NOT NULL,
    project_id            TEXT    NOT NULL,
    user_subject          TEXT    NOT NULL,
    scopes                TEXT    NOT NULL,
    state                 TEXT    NOT NULL CHECK (state IN ('active', 'revoked')),
    created_at            INTEGER NOT NULL,
    last_seen_at          INTEGER NOT NULL,
    idle_timeout_seconds  INTEGER NOT NULL CHECK (idle_timeout_seconds > 0),
    absolute_expire_time  INTEGER NOT NULL,
    revoke_time           INTEGER
) STRICT;
CREATE INDEX sessions_by_user ON sessions (tenant_id, project_id, user_subject);
CREATE INDEX sessions_by_absolute_expiry ON sessions (absolute_expire_time);

CREATE TABLE changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL
               CHECK (kind IN ('api_key', 'session', 'signing_key', 'tenant_settings')),
    entity_id  TEXT    NOT NULL,
    at         INTEGER NOT NULL
) STRICT;
