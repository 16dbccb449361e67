-- The adapter each shard should serve (desired state). The workflow's apply step writes it; the
-- per-replica reconciler (serving) makes every replica follow it and acknowledges.
-- depends: 0005.callbacks

CREATE TABLE desired_adapters (
    shard          integer PRIMARY KEY CHECK (shard >= 0),
    adapter_name   text,            -- NULL: the shard is dead (serves no adapter until retrained)
    path           text,
    adapter_sha256 text CHECK (adapter_sha256 IS NULL OR adapter_sha256 ~ '^[0-9a-f]{64}$'),
    request_id     uuid,            -- the deletion request that set it, if any
    updated_at     timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT, UPDATE ON desired_adapters TO lethe_app;
