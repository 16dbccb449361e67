-- Rolling back cannot unseal: the keys are outside the database. Only for an empty store.
ALTER TABLE kb_chunks DROP COLUMN sealed;
DROP INDEX kb_documents_terms;
ALTER TABLE kb_documents DROP CONSTRAINT sealed_with_its_key;
ALTER TABLE kb_documents DROP COLUMN terms, DROP COLUMN key_id, DROP COLUMN sealed;
ALTER TABLE kb_documents ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(text, ''))) STORED;
CREATE INDEX kb_documents_tsv ON kb_documents USING gin (tsv);
ALTER TABLE records DROP CONSTRAINT sealed_with_its_key;
ALTER TABLE records DROP CONSTRAINT purged_means_no_text;
ALTER TABLE records DROP COLUMN key_id, DROP COLUMN sealed;
ALTER TABLE records ADD CONSTRAINT purged_means_no_text CHECK ((text IS NULL) = (purged_at IS NOT NULL));
