DROP INDEX ledger_entries_request;
DROP INDEX deletion_requests_pending;
DROP INDEX deletion_requests_batch;
ALTER TABLE deletion_requests DROP COLUMN forgotten_time, DROP COLUMN batch_id;
