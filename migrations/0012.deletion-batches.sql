-- Coalesced deletions: requests that the worker claims together share one plan, one
-- materialisation and one rollout (a batch). Each request keeps its own status, result, receipt
-- and ledger entries; `batch_id` names the batch it was applied with, `forgotten_time` the moment
-- every routable replica served weights that never saw its records (before verification and the
-- receipt: `completed_time`).
-- depends: 0011.sealed-text

ALTER TABLE deletion_requests ADD COLUMN batch_id uuid, ADD COLUMN forgotten_time timestamptz;
CREATE INDEX deletion_requests_batch ON deletion_requests (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX deletion_requests_pending ON deletion_requests (received_time, id) WHERE status = 'pending';
-- a re-run of a request's saga looks up its earlier entries by request id
CREATE INDEX ledger_entries_request ON ledger_entries ((body->>'request'), kind);
