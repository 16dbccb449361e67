DROP INDEX records_by_content_hash;
DROP INDEX records_by_text_key;
ALTER TABLE records DROP COLUMN text_key;
