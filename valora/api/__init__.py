"""The tenant-facing HTTP API (FastAPI): an app shell over `invoicing.operations` and `streams.ingest`.

It holds no SQL and no billing logic: each route authenticates the key, checks its scope,
calls one operation with the key's organization, and returns the operation's read model.
"""
