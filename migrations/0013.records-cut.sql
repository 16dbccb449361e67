-- A record is deleted from training the moment a deletion cuts the stages that saw it, not only
-- when its text is purged after verification: `cut_at` marks it. From then on no (re)training reads
-- it and every plan counts it as deleted, so a background retrain running while its deletion is
-- still being verified cannot bring it back into a served block.
-- depends: 0012.deletion-batches

ALTER TABLE records ADD COLUMN cut_at timestamptz;
UPDATE records SET cut_at = purged_at WHERE purged_at IS NOT NULL;
