-- Crypto-shredding: personal text is stored sealed (AES-256-GCM) under a data key of its own
-- that lives outside PostgreSQL (service/store/keystore.py). A deletion destroys the key, so
-- every copy of the ciphertext (heap, WAL, backups) is unreadable; the `text` columns stay only
-- for rows written before this migration until `lethe migrate` seals them (then they are NULL).
-- The knowledge base's full-text index becomes an index of keyed word hashes (`terms`): the
-- generated tsvector held the documents' words in clear.
-- depends: 0010.record-text-keys

ALTER TABLE records ADD COLUMN sealed bytea, ADD COLUMN key_id uuid;
ALTER TABLE records DROP CONSTRAINT purged_means_no_text;
ALTER TABLE records ADD CONSTRAINT purged_means_no_text
    CHECK (purged_at IS NULL OR (text IS NULL AND sealed IS NULL));
ALTER TABLE records ADD CONSTRAINT sealed_with_its_key CHECK ((sealed IS NULL) = (key_id IS NULL));

ALTER TABLE kb_documents DROP COLUMN tsv;
ALTER TABLE kb_documents ALTER COLUMN text DROP NOT NULL;
ALTER TABLE kb_documents ADD COLUMN sealed bytea, ADD COLUMN key_id uuid, ADD COLUMN terms tsvector;
ALTER TABLE kb_documents ADD CONSTRAINT sealed_with_its_key CHECK ((sealed IS NULL) = (key_id IS NULL));
CREATE INDEX kb_documents_terms ON kb_documents USING gin (terms);

ALTER TABLE kb_chunks ALTER COLUMN text DROP NOT NULL;
ALTER TABLE kb_chunks ADD COLUMN sealed bytea;
