-- Subjects and training records.
-- A subject is known only by a keyed hash (HMAC-SHA256 under the server key) of a canonical
-- identity ("email:…", "person:…"); the raw identity is never stored. A record's text is
-- set to NULL when it is purged after a deletion; its content hash stays for the ledger.

CREATE TABLE subjects (
    subject_hash bytea PRIMARY KEY CHECK (octet_length(subject_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE records (
    id           text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 256),
    content_hash bytea NOT NULL CHECK (octet_length(content_hash) = 32),
    text         text,
    shard        integer CHECK (shard >= 0),
    slice        integer CHECK (slice >= 0),
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    purged_at    timestamptz,
    CONSTRAINT purged_means_no_text CHECK ((text IS NULL) = (purged_at IS NOT NULL)),
    CONSTRAINT placed_together CHECK ((shard IS NULL) = (slice IS NULL))
);

CREATE TABLE record_subjects (
    record_id    text  NOT NULL REFERENCES records (id),
    subject_hash bytea NOT NULL REFERENCES subjects (subject_hash),
    PRIMARY KEY (record_id, subject_hash)
);

CREATE INDEX record_subjects_by_subject ON record_subjects (subject_hash);
CREATE INDEX records_by_placement ON records (shard, slice) WHERE shard IS NOT NULL;
