-- Zumik Secrets, PostgreSQL schema 0008: break-glass grants (an operator's emergency access to
-- one tenant, approved by a second operator, time-bound, revocable). Expiry is computed from
-- expires_at, never written; state only moves pending -> active -> revoked (or pending -> revoked).
CREATE TABLE break_glass_grants (
    grant_id        text        NOT NULL PRIMARY KEY,
    tenant_id       text        NOT NULL,
    permission_set  text        NOT NULL,
    requester       text        NOT NULL,
    requester_cert  text        NOT NULL,
    reason          text        NOT NULL,
    ticket          text        NOT NULL,
    duration_s      bigint      NOT NULL CHECK (duration_s > 0),
    state           text        NOT NULL CHECK (state IN ('pending', 'active', 'revoked')),
    requested_at    timestamptz NOT NULL,
    approver        text        NOT NULL DEFAULT '',
    approver_cert   text        NOT NULL DEFAULT '',
    approved_at     timestamptz,
    expires_at      timestamptz,
    revoked_by      text        NOT NULL DEFAULT '',
    revoked_at      timestamptz,
    CHECK (approver = '' OR (approver <> requester AND approver_cert <> requester_cert)),
    CHECK (expires_at IS NULL OR expires_at = approved_at + make_interval(secs => duration_s))
);
CREATE INDEX break_glass_grants_by_tenant ON break_glass_grants (tenant_id, requested_at);
