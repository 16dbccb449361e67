-- Every attempt to deliver a signed status callback (OpenDSR status_callback_urls).
-- depends: 0004.deletions-and-api-keys

CREATE TABLE callback_attempts (
    id          bigserial PRIMARY KEY,
    deletion_id uuid NOT NULL REFERENCES deletion_requests (id),
    url         text NOT NULL,
    status      text NOT NULL,
    attempt     integer NOT NULL CHECK (attempt >= 1),
    http_status integer,
    error       text,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX callback_attempts_by_request ON callback_attempts (deletion_id);
GRANT SELECT, INSERT ON callback_attempts TO lethe_app;
