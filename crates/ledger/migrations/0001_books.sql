-- The coordinator's books in PostgreSQL, shared by every replica of a
-- deployment. Money is BIGINT nano-USD (exact integers). Rows that replicas
-- follow carry `xid`, the transaction that last wrote them, so a replica can
-- read "everything committed since" without missing a late commit (see
-- `PgLedger::changes`).

CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    -- The AppRecord as JSON (budgets, limits, routing, margin).
    record TEXT NOT NULL,
    -- The sum of the app's top-ups, kept in their transactions. The
    -- balance is topped_up - charged (the spend row SpendKey::APP_TOTAL,
    -- ('a', 't')) - live
    -- holds, read in one snapshot under this row's lock.
    topped_up BIGINT NOT NULL DEFAULT 0 CHECK (topped_up >= 0),
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX apps_xid ON apps (xid);

CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL REFERENCES apps (id),
    sha256 BYTEA NOT NULL UNIQUE,
    -- The KeyRecord as JSON.
    record TEXT NOT NULL,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX keys_xid ON keys (xid);

CREATE TABLE topups (
    id BIGSERIAL PRIMARY KEY,
    app TEXT NOT NULL REFERENCES apps (id),
    amount BIGINT NOT NULL CHECK (amount > 0),
    at_ms BIGINT NOT NULL,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX topups_xid ON topups (xid);

-- One row per job: the job id is the primary key, so a replayed receipt is
-- refused by the database whichever replica sees it.
CREATE TABLE entries (
    job_id BYTEA PRIMARY KEY CHECK (length(job_id) = 16),
    app TEXT NOT NULL,
    recorded_at_ms BIGINT NOT NULL,
    total BIGINT NOT NULL CHECK (total >= 0),
    -- The ledger entry (countersigned receipt, who pays, the charge) as JSON.
    entry TEXT NOT NULL,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX entries_xid ON entries (xid);
CREATE INDEX entries_app_time ON entries (app, recorded_at_ms);

-- Worst-case amounts reserved for jobs in flight. A replica that dies
-- leaves its holds; they stop counting at expires_at_ms and are swept.
CREATE TABLE holds (
    id BIGSERIAL PRIMARY KEY,
    app TEXT NOT NULL,
    key_id TEXT NOT NULL,
    end_customer TEXT,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX holds_app ON holds (app, expires_at_ms);

-- Booked charges per budget scope and window, kept in the commit's
-- transaction. The (scope, win) text is written and read by one Rust type,
-- `sharenet_ledger::SpendKey` (crates/ledger/src/spend.rs: the app, a key
-- or an end customer; a UTC day, a calendar month or all time), whose
-- tests pin the exact strings. Its `APP_TOTAL` row is everything the app
-- was charged. Commits lock these
-- rows, never the app's, so they do not hold up admissions while their
-- WAL flushes.
CREATE TABLE spend (
    app TEXT NOT NULL,
    scope TEXT NOT NULL,
    win TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (app, scope, win)
);

-- Settled periods, once each (the label is the primary key).
CREATE TABLE statements (
    label TEXT PRIMARY KEY,
    -- The stored record (signed statement, private builder lines, job ids).
    record BYTEA NOT NULL,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX statements_xid ON statements (xid);

-- The coordinator keys of this deployment: a receipt countersigned by any
-- of them is ours.
CREATE TABLE coordinators (
    public_key BYTEA PRIMARY KEY CHECK (length(public_key) = 32),
    first_seen_ms BIGINT NOT NULL
);
