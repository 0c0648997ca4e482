-- Zumik Secrets, SQLite schema v2: the tamper-evident audit log.
-- One hash chain per tenant (tenant '-' is the service-wide chain). Appends run in
-- BEGIN IMMEDIATE transactions, which serialise every writer of the file, so the chain stays
-- gapless. Times are INTEGER microseconds since the epoch; see core/audit_chain.py for the
-- canonical form the hashes cover.

CREATE TABLE audit_heads (
    tenant      TEXT    NOT NULL PRIMARY KEY,
    seq         INTEGER NOT NULL CHECK (seq >= 0),
    hash        BLOB    NOT NULL CHECK (length(hash) = 32),
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE audit_events (
    tenant         TEXT    NOT NULL,
    seq            INTEGER NOT NULL CHECK (seq >= 1),
    event_id       TEXT    NOT NULL UNIQUE,
    time           INTEGER NOT NULL,
    actor          TEXT    NOT NULL,
    actor_subject  TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    target         TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    trace_id       TEXT    NOT NULL,
    attributes     TEXT    NOT NULL,  -- JSON object of strings, keys sorted
    prev_hash      BLOB    NOT NULL,
    hash           BLOB    NOT NULL,
    PRIMARY KEY (tenant, seq)
) STRICT, WITHOUT ROWID;
CREATE INDEX audit_events_by_time ON audit_events (tenant, time);
CREATE INDEX audit_events_by_action ON audit_events (tenant, action, seq);

CREATE TABLE audit_checkpoints (
    tenant     TEXT    NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq >= 0),
    head_hash  BLOB    NOT NULL,
    time       INTEGER NOT NULL,
    kid        TEXT    NOT NULL,
    signature  BLOB    NOT NULL,
    PRIMARY KEY (tenant, seq)
) STRICT;
