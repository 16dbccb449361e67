-- S3T: the layout (fixed at first ingest), placement of data subjects into (shard, slice),
-- the slice order of every (shard, sequence) unit, and every stage artifact with its lineage.
-- depends: 0001.subjects-and-records

CREATE TABLE s3t_layout (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    shards     integer NOT NULL CHECK (shards > 0),
    slices     integer NOT NULL CHECK (slices > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A group is one data subject (the smallest subject hash of its records); placed once, never moved.
CREATE TABLE placement_groups (
    group_hash   bytea PRIMARY KEY CHECK (octet_length(group_hash) = 32),
    placed_index integer NOT NULL UNIQUE CHECK (placed_index >= 0),
    shard        integer NOT NULL CHECK (shard >= 0),
    slice        integer NOT NULL CHECK (slice >= 0)
);

ALTER TABLE records ADD COLUMN group_hash bytea REFERENCES placement_groups (group_hash);

CREATE TABLE s3t_units (
    shard       integer NOT NULL CHECK (shard >= 0),
    sequence    integer NOT NULL CHECK (sequence >= 0),
    slice_order integer[] NOT NULL,
    PRIMARY KEY (shard, sequence)
);

CREATE TABLE s3t_artifacts (
    id             bigserial PRIMARY KEY,
    shard          integer NOT NULL,
    sequence       integer NOT NULL,
    version        integer NOT NULL CHECK (version >= 0),
    stage          integer NOT NULL CHECK (stage >= 0),
    path           text NOT NULL,
    adapter_sha256 text NOT NULL CHECK (adapter_sha256 ~ '^[0-9a-f]{64}$'),
    lineage        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    destroyed_at   timestamptz,
    UNIQUE (shard, sequence, version, stage),
    FOREIGN KEY (shard, sequence) REFERENCES s3t_units (shard, sequence)
);

CREATE INDEX s3t_artifacts_live ON s3t_artifacts (shard, sequence, version, stage) WHERE destroyed_at IS NULL;
