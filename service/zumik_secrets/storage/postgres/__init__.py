"""PostgreSQL adapter: psycopg 3 with psycopg_pool, LISTEN/NOTIFY for cross-replica invalidation."""
