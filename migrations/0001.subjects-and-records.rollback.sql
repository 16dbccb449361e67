DROP TABLE record_subjects;
DROP TABLE records;
DROP TABLE subjects;
