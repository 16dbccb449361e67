ALTER TABLE records DROP COLUMN cut_at;
