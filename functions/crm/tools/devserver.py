"""`crm dev`: database, migrations, every function on one port, the jobs, a demo org (SPEC §3).

Each function is mounted exactly as functions-framework would deploy it (`create_app(target,
source)`) under its own path prefix, and served by the same server as a deployment (`crm.server`:
read deadlines, strict framing), so what runs here is what runs alone in production.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import signal
import sys
from pathlib import Path

import flask
import functions_framework
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from crm import ROOT, config
from crm.db import JOB_POOL_SIZE, Database, job_database, set_database
from crm.errors import NotFound
from crm.http import endpoint, framework_error, problem_response, require_method
from crm.orgs import accounts
from crm.server import Server
from crm.tools import openapi
from crm.tools.common import CliError, connect

log = logging.getLogger("crm.dev")

#: path prefix -> (folder under functions/, functions-framework target)
FUNCTIONS = {
    "/booking": ("booking", "booking"),
    "/leads": ("leads", "leads"),
    "/webhooks": ("webhooks", "webhooks"),
    "/reconcile": ("reconcile", "reconcile"),
    "/api": ("api", "api"),
}

DEMO_ORG = "demo"
DEMO_MANAGER = "manager@demo.test"


def _at_root_when_bare(app):
    """`POST /booking` reaches the function as `/`, as on Cloud Run / Cloud Functions (no 308)."""

    def wsgi(environ, start_response):
        if not environ.get("PATH_INFO"):
            environ["PATH_INFO"] = "/"
        return app(environ, start_response)

    return wsgi


def function_apps() -> dict:
    apps = {}
    for prefix, (folder, target) in FUNCTIONS.items():
        source = ROOT / "functions" / folder / "main.py"
        if source.exists():
            apps[prefix] = _at_root_when_bare(functions_framework.create_app(target=target, source=str(source)))
    return apps


def root_app(media_dir: Path | None) -> flask.Flask:
    """`/healthz`, `/media/…` (the local image store) and problem+json 404s for everything else."""
    app = flask.Flask("crm-dev")
    app.register_error_handler(HTTPException, framework_error)  # e.g. a path no route matches

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    @app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    def fallback(path: str) -> flask.Response:
        return _root(flask.request)

    @endpoint
    def _root(request: flask.Request) -> flask.Response:
        if request.path == "/openapi.json":
            require_method(request, "GET", "HEAD")
            return openapi.response()
        if request.path.startswith("/media/") and media_dir is not None and request.method in ("GET", "HEAD"):
            return _media(media_dir, request.path.removeprefix("/media/"))
        raise NotFound(f"No route for {request.method} {request.path}.")

    return app


def _media(media_dir: Path, name: str) -> flask.Response:
    base = media_dir.resolve()
    target = (base / name).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        return problem_response(NotFound("No such image."))
    mimetype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    resp = flask.send_file(target, mimetype=mimetype, max_age=31_536_000, conditional=True)
    resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def build_app(media_dir: Path | None = None):
    return DispatcherMiddleware(root_app(media_dir), function_apps())


def ensure_demo(url: str) -> tuple[str, str] | None:
    """On an empty database: org `demo` (DE) and a demo manager. Returns (org id, user id)."""
    with connect(url) as conn:
        if accounts.any_organization(conn):
            return None
        org_id = accounts.create_org(conn, DEMO_ORG, "Demo Bikes", "DE")
        user_id = accounts.add_staff(conn, DEMO_ORG, DEMO_MANAGER, "manager")
        return org_id, user_id


def demo_manager_id(url: str) -> str | None:
    with connect(url) as conn:
        return accounts.staff_user_id(conn, DEMO_ORG, DEMO_MANAGER)


def try_it_text(base: str, demo: tuple[str, str] | None, manager_id: str | None) -> str:
    lines = [
        "",
        f"  crm dev is running on {base}",
        "",
        "  Try it:",
        f"    curl -s {base}/healthz",
        f"    curl -s -X POST {base}/booking -H 'Content-Type: application/json' \\",
        "      -d '{\"org\":\"demo\",\"customer\":{\"full_name\":\"Anna Schmidt\",\"phone\":\"0151 2345 6789\"},"
        "\"item\":{\"external_ref\":\"listing-4711\",\"title\":\"Canyon Spectral 29\",\"price\":2450,"
        "\"currency\":\"EUR\"}}'",
        "",
        "  As the demo manager (a second terminal in this directory talks to the same database):",
    ]
    if manager_id:
        lines.append(f"    TOKEN=$(crm token --user {manager_id})")
    else:
        lines += [f"    crm staff add --org {DEMO_ORG} --email {DEMO_MANAGER} --role manager   # prints the user id",
                  "    TOKEN=$(crm token --user <that id>)"]
    lines += [
        f"    curl -s -X PATCH {base}/leads/<lead_id from the booking> -H \"Authorization: Bearer $TOKEN\" \\",
        "      -H 'Content-Type: application/json' -d '{\"status\":\"contacted\",\"note\":\"called back\"}'",
        "",
        "  Ctrl-C stops the server (and the embedded database).",
        "",
    ]
    if demo:
        lines.insert(2, f"  Created organization '{DEMO_ORG}' ({demo[0]}) and manager {DEMO_MANAGER} ({demo[1]}).")
    return "\n".join(lines)


def public_url(host: str, port: int) -> str:
    """The URL to print and to link images with: a wildcard bind is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104 (mapping a wildcard bind to loopback)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_dev(*, port: int, host: str, jobs: bool, demo: bool) -> int:
    from crm.tools.embedded import EmbeddedPostgres, dev_secrets, save_dev_settings
    from crm.tools.migrate import MigrationError, Migrator, refuse_transaction_pooler

    try:
        refuse_transaction_pooler()
    except MigrationError as exc:
        raise CliError(str(exc)) from exc
    data_dir = config.data_dir()
    for key, value in dev_secrets(data_dir).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("CRM_STORAGE_DIR", str(data_dir / "media"))
    # Listen first: `--port 0` takes a free port, and the public URL (image links, printed) is the
    # real one. Connections wait in the backlog until serve_forever, once the app is built.
    try:
        server = Server(None, host, port)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    os.environ.setdefault("CRM_PUBLIC_URL", public_url(host, server.port))
    os.environ.setdefault("CRM_WEBHOOK_ALLOW_LOOPBACK", "1")  # a local receiver, as the README shows
    save_dev_settings({k: os.environ[k] for k in ("CRM_STORAGE_DIR", "CRM_PUBLIC_URL", "CRM_WEBHOOK_ALLOW_LOOPBACK")},
                      data_dir)

    embedded = None
    db: Database | None = None
    job_db: Database | None = None
    runner = None
    try:
        url = config.env("DATABASE_URL")
        if not url:
            print(f"crm dev: starting embedded PostgreSQL in {data_dir / 'pgdata'} …", flush=True)
            embedded = EmbeddedPostgres(data_dir)
            url = embedded.start()
            os.environ["DATABASE_URL"] = url

        with connect(url, autocommit=True) as conn:
            try:
                Migrator(conn, log=lambda m: print(f"crm dev: {m}", flush=True)).migrate()
            except MigrationError as exc:
                raise CliError(str(exc)) from exc
        created = ensure_demo(url) if demo else None

        from crm.worker import Worker, default_jobs

        # Requests on the request deadlines; the jobs (the scheduler's threads and POST /reconcile)
        # on the job deadlines, in a pool of their own, so requests never wait for a job's connection.
        db = Database(url, max_size=config.env_int("CRM_DB_POOL_SIZE", 10), pooler=config.pooler_mode())
        db.open()
        job_connections = len(default_jobs()) + 2 if jobs else 0  # a thread each, dispatch-outbox two
        job_db = job_database(url, max_size=job_connections + JOB_POOL_SIZE, pooler=config.pooler_mode())
        job_db.open()
        set_database(db, jobs=job_db)

        server.app = build_app(Path(os.environ["CRM_STORAGE_DIR"]))

        if jobs:
            # Every scheduled job in a thread of its own (one slow run holds up no other), and
            # dispatch-outbox woken by NOTIFY; a job missing a setting is logged and stays off.
            runner = Worker(job_db, strict=False, quiet=True).start()

        def stop(signum, frame):  # noqa: ARG001
            server.shutdown()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(try_it_text(public_url(host, server.port), created, demo_manager_id(url)), flush=True)
        server.serve_forever()
        print("crm dev: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        if runner is not None:
            runner.stop(timeout=20)
        server.server_close()
        set_database(None)
        for pool in (db, job_db):
            if pool is not None:
                pool.close()
        if embedded is not None:
            embedded.stop()
