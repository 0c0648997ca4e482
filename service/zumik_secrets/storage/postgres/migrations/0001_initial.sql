-- Zumik Secrets, PostgreSQL schema v1.
-- Times are timestamptz; bytes are bytea; scope lists are text[].

CREATE TABLE tenant_settings (
    tenant_id       text        NOT NULL PRIMARY KEY,
    telemetry_mode  text        NOT NULL CHECK (telemetry_mode IN ('default', 'rich')),
    updated_at      timestamptz NOT NULL
);

CREATE TABLE signing_keys (
    kid                  text        NOT NULL PRIMARY KEY,
    purpose              text        NOT NULL CHECK (purpose IN ('claims', 'audit')),
    public_key           bytea       NOT NULL,
    wrapped_private_key  bytea       NOT NULL,
    keyring_version      integer     NOT NULL,
    state                text        NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    created_at           timestamptz NOT NULL,
    retire_after         timestamptz
);
CREATE INDEX signing_keys_by_purpose ON signing_keys (purpose, created_at);

CREATE TABLE api_keys (
    key_id         text        NOT NULL PRIMARY KEY,
    seq            bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    tenant_id      text        NOT NULL,
    project_id     text        NOT NULL,
    display_name   text        NOT NULL,
    env            text        NOT NULL,
    masked_prefix  text        NOT NULL,
    salt           bytea       NOT NULL,
    secret_hash    bytea       NOT NULL,
    scopes         text[]      NOT NULL,
    state          text        NOT NULL CHECK (state IN ('active', 'revoked')),
    created_at     timestamptz NOT NULL,
    expire_time    timestamptz,
    revoke_time    timestamptz,
    last_used_at   timestamptz,
    rotated_from   text
);
CREATE INDEX api_keys_by_project ON api_keys (tenant_id, project_id, seq);
CREATE INDEX api_keys_revoked ON api_keys (revoke_time) WHERE state = 'revoked';
CREATE INDEX api_keys_expiring ON api_keys (expire_time) WHERE expire_time IS NOT NULL;

CREATE TABLE sessions (
    session_id            text        NOT NULL PRIMARY KEY,
    seq                   bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    token_hash            bytea       NOT NULL UNIQUE,
    tenant_id             text        NOT NULL,
    project_id            text        NOT NULL,
    user_subject          text        NOT NULL,
    scopes                text[]      NOT NULL,
    state                 text        NOT NULL CHECK (state IN ('active', 'revoked')),
    created_at            timestamptz NOT NULL,
    last_seen_at          timestamptz NOT NULL,
    idle_timeout_seconds  integer     NOT NULL CHECK (idle_timeout_seconds > 0),
    absolute_expire_time  timestamptz NOT NULL,
    revoke_time           timestamptz
);
CREATE INDEX sessions_by_user ON sessions (tenant_id, project_id, user_subject);
CREATE INDEX sessions_by_absolute_expiry ON sessions (absolute_expire_time);

-- Writers serialise change inserts with a transaction-scoped advisory lock, so seq order is
-- commit order and a reader that has seen seq N can never later find a committed seq < N.
CREATE TABLE changes (
    seq        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text        NOT NULL
               CHECK (kind IN ('api_key', 'session', 'signing_key', 'tenant_settings')),
    entity_id  text        NOT NULL,
    at         timestamptz NOT NULL
);
