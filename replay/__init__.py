"""Forking and re-running chains under another policy (planned: see the replay issue)."""
