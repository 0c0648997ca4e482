-- Zumik Secrets, SQLite schema 0008: break-glass grants (an operator's emergency access to one
-- tenant, approved by a second operator, time-bound, revocable). Expiry is computed from
-- expires_at, never written; state only moves pending -> active -> revoked (or pending -> revoked).
CREATE TABLE break_glass_grants (
    grant_id        TEXT    NOT NULL PRIMARY KEY,
    tenant_id       TEXT    NOT NULL,
    permission_set  TEXT    NOT NULL,
    requester       TEXT    NOT NULL,
    requester_cert  TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    ticket          TEXT    NOT NULL,
    duration_s      INTEGER NOT NULL CHECK (duration_s > 0),
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'active', 'revoked')),
    requested_at    INTEGER NOT NULL,
    approver        TEXT    NOT NULL DEFAULT '',
    approver_cert   TEXT    NOT NULL DEFAULT '',
    approved_at     INTEGER,
    expires_at      INTEGER,
    revoked_by      TEXT    NOT NULL DEFAULT '',
    revoked_at      INTEGER,
    CHECK (approver = '' OR (approver <> requester AND approver_cert <> requester_cert)),
    CHECK (expires_at IS NULL OR expires_at = approved_at + duration_s * 1000000)
) STRICT;
CREATE INDEX break_glass_grants_by_tenant ON break_glass_grants (tenant_id, requested_at);
