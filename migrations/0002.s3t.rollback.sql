DROP TABLE s3t_artifacts;
DROP TABLE s3t_units;
ALTER TABLE records DROP COLUMN group_hash;
DROP TABLE placement_groups;
DROP TABLE s3t_layout;
