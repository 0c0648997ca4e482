"""SQLite adapter: the embedded default store (one file, WAL, synchronous=FULL)."""
