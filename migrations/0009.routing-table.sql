-- A replica may serve several adapter names at once: a routing table (served_model.aggregation
-- 'routing') loads one per live shard, and the gateway sends each request to one of them.
-- depends: 0008.knowledge-base

ALTER TABLE replicas ADD COLUMN serving_names text[] NOT NULL DEFAULT '{}';
UPDATE replicas SET serving_names = ARRAY[serving_name] WHERE serving_name IS NOT NULL;
ALTER TABLE replicas DROP COLUMN serving_name;

CREATE OR REPLACE FUNCTION lethe_notify_routing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.routable IS DISTINCT FROM OLD.routable OR NEW.serving_names IS DISTINCT FROM OLD.serving_names
       OR NEW.url IS DISTINCT FROM OLD.url OR NEW.acked_generation IS DISTINCT FROM OLD.acked_generation THEN
        PERFORM pg_notify('lethe_routing', coalesce(NEW.id, OLD.id));
    END IF;
    RETURN NULL;
END $$;
