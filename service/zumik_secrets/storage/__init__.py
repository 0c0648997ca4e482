"""Persistence for Zumik Secrets: ports (Protocols), records, and the SQLite/PostgreSQL adapters."""
