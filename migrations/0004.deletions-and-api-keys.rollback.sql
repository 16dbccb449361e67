DROP TABLE idempotency_keys;
DROP TABLE deletion_requests;
DROP TABLE api_keys;
