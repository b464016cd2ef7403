"""Batch state in Redis: records, status, ids, the store, the shard ledger, service stats."""
