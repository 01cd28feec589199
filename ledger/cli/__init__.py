"""The agentledger command line (the one place that composes ledger, projections and replay)."""
