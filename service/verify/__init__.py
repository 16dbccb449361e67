"""Verifying a deletion: structural proof, equivalence check and probes of the served model."""
