"""The deletion ledger: hash chain, RFC 6962 Merkle tree, signed checkpoints, offline verification."""
