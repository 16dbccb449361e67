ALTER TABLE replicas ADD COLUMN serving_name text;
UPDATE replicas SET serving_name = serving_names[1];
CREATE OR REPLACE FUNCTION lethe_notify_routing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.routable IS DISTINCT FROM OLD.routable OR NEW.serving_name IS DISTINCT FROM OLD.serving_name
       OR NEW.url IS DISTINCT FROM OLD.url OR NEW.acked_generation IS DISTINCT FROM OLD.acked_generation THEN
        PERFORM pg_notify('lethe_routing', coalesce(NEW.id, OLD.id));
    END IF;
    RETURN NULL;
END $$;
ALTER TABLE replicas DROP COLUMN serving_names;
