-- Records holding the same personal data under another subject's id: a keyed hash (HMAC under the
-- server key) of the record's normalised text (NFKC, case-folded, whitespace collapsed), so a
-- deletion finds them without reading every text. Written at ingest; NULL for records ingested
-- before (their exact duplicates are still found by content_hash).
-- depends: 0009.routing-table

ALTER TABLE records ADD COLUMN text_key bytea;
CREATE INDEX records_by_text_key ON records (text_key) WHERE text_key IS NOT NULL;
CREATE INDEX records_by_content_hash ON records (content_hash);
