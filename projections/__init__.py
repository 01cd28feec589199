"""Read models built from the ledger's streams (planned: see the projections issue)."""
