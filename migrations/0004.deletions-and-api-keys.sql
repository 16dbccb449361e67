-- Deletion requests, API keys (hashed, with scopes) and idempotency keys.
-- Subjects appear only as keyed hashes; raw identities are never stored.
-- depends: 0003.ledger

CREATE TABLE api_keys (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9]{8,32}$'),
    secret_hash bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    scopes      text[] NOT NULL,
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE deletion_requests (
    id             uuid PRIMARY KEY,
    request_type   text NOT NULL CHECK (request_type = 'erasure'),
    subject_hashes bytea[] NOT NULL,
    identity_types text[] NOT NULL,
    record_ids     text[] NOT NULL,
    submitted_time timestamptz,
    received_time  timestamptz NOT NULL,
    deadline       timestamptz NOT NULL,
    status         text NOT NULL CHECK (status IN ('pending', 'in_progress', 'completed', 'cancelled', 'failed')),
    callback_urls  text[] NOT NULL,
    updated_time   timestamptz NOT NULL,
    completed_time timestamptz,
    result         jsonb NOT NULL DEFAULT '{}',
    fingerprint    text NOT NULL,
    created_by     text NOT NULL
);

CREATE INDEX deletion_requests_open ON deletion_requests (deadline) WHERE status IN ('pending', 'in_progress');

-- Idempotency-Key records, kept for 24 hours (documented); the key is scoped to the API key.
CREATE TABLE idempotency_keys (
    principal   text NOT NULL,
    key         text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint text NOT NULL,
    deletion_id uuid NOT NULL REFERENCES deletion_requests (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

GRANT SELECT, INSERT, UPDATE ON deletion_requests, idempotency_keys TO lethe_app;
GRANT SELECT ON api_keys TO lethe_app;
