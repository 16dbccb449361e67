-- Serving: the model every replica should serve (one row, a new generation per change), the
-- replicas with what each serves and has acknowledged, and notifications for reconcilers and
-- gateways (LISTEN lethe_served / lethe_routing; both also resync periodically).
-- depends: 0006.desired-adapters

CREATE TABLE served_model (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    generation     bigint NOT NULL CHECK (generation >= 1),
    adapter_path   text,            -- NULL: every shard is dead, the base model is served
    adapter_sha256 text CHECK (adapter_sha256 IS NULL OR adapter_sha256 ~ '^[0-9a-f]{64}$'),
    aggregation    text NOT NULL,   -- single | merged
    request_id     uuid,            -- the deletion request that set it, if any
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((adapter_path IS NULL) = (adapter_sha256 IS NULL))
);

CREATE TABLE replicas (
    id               text PRIMARY KEY,
    url              text NOT NULL,     -- internal address of the vLLM server; never exposed
    routable         boolean NOT NULL DEFAULT false,
    serving_name     text,              -- the name the gateway sends "lethe" requests to (NULL: base)
    serving_sha256   text,
    acked_generation bigint,            -- serves this generation; older names unloaded, their files gone
    acked_at         timestamptz,
    heartbeat_at     timestamptz NOT NULL DEFAULT now(),
    note             text               -- why it is not routable, if it is not
);

CREATE FUNCTION lethe_notify_served() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lethe_served', NEW.generation::text);
    RETURN NEW;
END $$;

CREATE FUNCTION lethe_notify_routing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.routable IS DISTINCT FROM OLD.routable OR NEW.serving_name IS DISTINCT FROM OLD.serving_name
       OR NEW.url IS DISTINCT FROM OLD.url OR NEW.acked_generation IS DISTINCT FROM OLD.acked_generation THEN
        PERFORM pg_notify('lethe_routing', coalesce(NEW.id, OLD.id));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER served_model_notify AFTER INSERT OR UPDATE ON served_model
    FOR EACH ROW EXECUTE FUNCTION lethe_notify_served();
CREATE TRIGGER replicas_notify_insert AFTER INSERT ON replicas
    FOR EACH ROW EXECUTE FUNCTION lethe_notify_routing();
CREATE TRIGGER replicas_notify_change AFTER UPDATE OR DELETE ON replicas
    FOR EACH ROW EXECUTE FUNCTION lethe_notify_routing();

GRANT SELECT, INSERT, UPDATE ON served_model TO lethe_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON replicas TO lethe_app;
