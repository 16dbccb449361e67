-- Closed-model path: the knowledge base a retrieval proxy answers from (documents, their
-- subjects as keyed hashes, chunks with embeddings in pgvector) and the forget entries that
-- deletions leave behind (keyed hashes of distinctive n-grams only, never text).
-- depends: 0007.serving

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE kb_documents (
    id            text PRIMARY KEY,
    source        text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    text          text NOT NULL,
    content_hash  bytea NOT NULL,
    suppressed_by uuid,       -- the erasure request that took it out of retrieval (deleted at purge)
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- 'simple': lower-cased words, no stemming; used to tell which n-grams no other document states
    tsv           tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
);
CREATE INDEX kb_documents_tsv ON kb_documents USING gin (tsv);
CREATE INDEX kb_documents_suppressed ON kb_documents (suppressed_by) WHERE suppressed_by IS NOT NULL;

CREATE TABLE kb_document_subjects (
    document_id  text NOT NULL REFERENCES kb_documents (id) ON DELETE CASCADE,
    subject_hash bytea NOT NULL,
    PRIMARY KEY (document_id, subject_hash)
);
CREATE INDEX kb_document_subjects_subject ON kb_document_subjects (subject_hash);

CREATE TABLE kb_chunks (
    id          bigserial PRIMARY KEY,
    document_id text NOT NULL REFERENCES kb_documents (id) ON DELETE CASCADE,
    ord         integer NOT NULL,
    text        text NOT NULL,
    embedding   vector(384) NOT NULL,  -- all-MiniLM-L6-v2, unit length
    UNIQUE (document_id, ord)
);
CREATE INDEX kb_chunks_embedding ON kb_chunks USING hnsw (embedding vector_cosine_ops);

CREATE TABLE kb_forget (
    id         bigserial PRIMARY KEY,
    request_id uuid NOT NULL UNIQUE,   -- one entry per erasure request
    documents  integer NOT NULL,       -- how many documents it removed
    terms      integer NOT NULL,       -- how many distinctive n-grams it holds (as hashes)
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kb_forget_terms (
    term_hash bytea NOT NULL CHECK (length(term_hash) = 16),  -- truncated HMAC-SHA256 of the n-gram
    forget_id bigint NOT NULL REFERENCES kb_forget (id),
    PRIMARY KEY (term_hash, forget_id)
);
