"""Storage backends: SQLite (embedded default) and PostgreSQL."""
