"""`valora api` (serve the HTTP API) and `valora keys create|list|revoke` (its API keys)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from valora.cli_common import connect_engine, load_settings, now_utc, parse_time, positive_int, resolve_bootstrap

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
API_POOL = 20  # database connections: one per thread-pool worker that may hold one at once


def build_app(settings: Any, *, bootstrap: str, engine: Any) -> Any:
    """The app with its real services: the engine, one producer, the wall clock."""
    from streams.ingest import EventProducer
    from valora.api.app import create_app, readiness, utc_now
    from valora.api.deps import ApiContext

    ctx = ApiContext(
        engine=engine,
        producer=EventProducer(bootstrap, settings.events_topic),
        clock=utc_now,
        future_tolerance=settings.future_tolerance,
        bootstrap=bootstrap,
        ready=readiness(engine, bootstrap),
    )
    return create_app(ctx)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn
    from sqlalchemy import create_engine

    from invoicing.db import connect, normalize_url
    from streams.worker import ensure_topics
    from valora.cli_common import resolve_database_url

    settings = load_settings()
    bootstrap = resolve_bootstrap(settings)
    database_url = resolve_database_url(settings)
    connect(database_url).dispose()  # refuses an out-of-date schema before serving anything
    # No pre-ping: it is a round trip on every request (~25% of a usage read). A connection that
    # died with its server fails one request with a 503, and SQLAlchemy then renews the whole pool.
    engine = create_engine(
        normalize_url(database_url), pool_size=API_POOL, pool_pre_ping=False, connect_args={"connect_timeout": 5}
    )
    ensure_topics(bootstrap, {settings.events_topic: settings.partitions})
    app = build_app(settings, bootstrap=bootstrap, engine=engine)
    host = args.host or settings.api_host or DEFAULT_HOST
    port = args.port or settings.api_port or DEFAULT_PORT
    print(f"valora api on http://{host}:{port}  (OpenAPI at /openapi.json, docs at /docs)", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        app.state.valora.producer.close()
        engine.dispose()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from invoicing.operations import keys

    engine = connect_engine(load_settings())
    try:
        if args.action == "create":
            created = keys.create_key(
                engine, args.org, args.scope, now=now_utc(), name=args.name, expires_at=args.expires_at
            )
            if args.json:
                print(created.model_dump_json())
            else:
                print(f"created key {created.id} for {created.organization}: {', '.join(created.scopes)}")
                print("the secret is shown once; store it now:")
                print(created.secret)
        elif args.action == "list":
            listed = keys.list_keys(engine, args.org)
            if args.json:
                print(json.dumps([k.model_dump(mode="json") for k in listed], indent=2))
            else:
                for k in listed:
                    state = "revoked" if k.revoked_at else (f"expires {k.expires_at}" if k.expires_at else "live")
                    print(f"{k.id}  {k.name or '-'}  {','.join(k.scopes)}  created {k.created_at}  {state}")
        else:
            revoked = keys.revoke_key(engine, args.key_id, now=now_utc())
            print(f"revoked key {revoked.id} ({revoked.organization}) at {revoked.revoked_at}")
    finally:
        engine.dispose()
    return 0


def add_api_parsers(sub: Any) -> None:
    """Register `api` and `keys` on the top-level subparsers."""
    from schemas.api import Scope

    api = sub.add_parser("api", help="serve the tenant-facing HTTP API (OpenAPI at /openapi.json)")
    api.add_argument("--host", help=f"interface to listen on (default $VALORA_API_HOST or {DEFAULT_HOST})")
    api.add_argument(
        "--port", type=positive_int(65_535), help=f"port (default $VALORA_API_PORT or {DEFAULT_PORT})"
    )
    api.set_defaults(func=cmd_api)

    keys = sub.add_parser("keys", help="API keys: create (secret shown once), list, revoke")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key for an organization; prints the secret once, last")
    create.add_argument("--org", required=True, help="organization id")
    create.add_argument(
        "--scope", action="append", required=True, choices=[s.value for s in Scope], help="repeatable"
    )
    create.add_argument("--name", help="what the key is for")
    create.add_argument("--expires-at", type=parse_time, default=None, help="RFC 3339 expiry (default: never)")
    create.add_argument("--json", action="store_true", help="print the key, with its secret, as JSON")
    create.set_defaults(func=cmd_keys)
    listing = actions.add_parser("list", help="an organization's keys (never their secrets)")
    listing.add_argument("--org", required=True, help="organization id")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_keys)
    revoke = actions.add_parser("revoke", help="revoke a key: its next request gets 401")
    revoke.add_argument("key_id", metavar="ID", help="the key's id (as `keys list` shows it)")
    revoke.set_defaults(func=cmd_keys)
