"""The document service (its RPCs arrive with their own issue; until then UNIMPLEMENTED)."""
