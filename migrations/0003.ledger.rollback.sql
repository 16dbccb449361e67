DROP TABLE ledger_checkpoints;
DROP TABLE ledger_entries;
DROP FUNCTION ledger_refuse_change();
