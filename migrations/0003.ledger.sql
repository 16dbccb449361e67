-- The deletion ledger: append-only, hash-chained entries and signed Merkle checkpoints.
-- UPDATE, DELETE and TRUNCATE are refused by triggers (for every role, the owner included) and
-- are not granted to the application role; inserts go through one path (service.store.ledger).
-- depends: 0002.s3t

CREATE TABLE ledger_entries (
    seq        bigint PRIMARY KEY CHECK (seq >= 1),
    kind       text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_.]{0,63}$'),
    body       jsonb NOT NULL,
    created_at text NOT NULL,
    prev_hash  bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
    row_hash   bytea NOT NULL UNIQUE CHECK (octet_length(row_hash) = 32)
);

CREATE TABLE ledger_checkpoints (
    size       bigint PRIMARY KEY CHECK (size >= 1),
    root       bytea NOT NULL CHECK (octet_length(root) = 32),
    note       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_checkpoints_append_only BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_checkpoints_no_truncate BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- The role the service runs as in production (DATABASE_URL's user should be granted it).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lethe_app') THEN
        CREATE ROLE lethe_app NOLOGIN;
    END IF;
END $$;
REVOKE ALL ON ledger_entries, ledger_checkpoints FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries, ledger_checkpoints FROM lethe_app;
GRANT SELECT, INSERT ON ledger_entries, ledger_checkpoints TO lethe_app;
