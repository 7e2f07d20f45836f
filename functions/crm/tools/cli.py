"""The `crm` command line (SPEC §4).

Exit codes: 0 success, 1 failure, 2 usage error. Errors are one readable line on stderr, chosen by
`EXIT_CODES` from the exception's class (the project's own: database errors arrive as `crm.errors`
types through `crm.db.direct`, by the connector's one SQLSTATE table); `org create`, `staff add` and
`token` print only the id or token on stdout, for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from crm import config, supabase_auth
from crm.errors import ConfigError, Conflict, CrmError, DatabaseError, InvalidInput, Unprocessable
from crm.orgs import accounts
from crm.orgs.accounts import ROLES
from crm.outbox import manage
from crm.tools.common import CliError, UsageError, connect, database_url

if TYPE_CHECKING:
    import psycopg


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


#: Exception class → exit code, resolved through the MRO like `crm.http.PROBLEMS`: the same classes
#: the functions answer, so a database outage, a refused rule or a bug reads the same everywhere.
EXIT_CODES: dict[type[BaseException], int] = {
    UsageError: 2,
    CliError: 1,
    ConfigError: 1,
    CrmError: 1,
}


def exit_code(exc: BaseException) -> int | None:
    """The exit code `EXIT_CODES` gives this exception (None: not ours, let it crash loudly)."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return None


def error_line(exc: BaseException) -> str:
    """One readable line for stderr."""
    if isinstance(exc, DatabaseError):
        text = f"database: {exc.message}"
    elif isinstance(exc, CrmError):
        text = exc.detail or exc.code
    else:
        text = str(exc)
    lines = text.strip().splitlines()
    return f"crm: error: {lines[0] if lines else type(exc).__name__}"


# -- db ------------------------------------------------------------------------------------------
def cmd_db_migrate(args: argparse.Namespace) -> int:
    from crm.tools.migrate import MigrationError, Migrator, refuse_transaction_pooler

    try:
        refuse_transaction_pooler()
    except MigrationError as exc:
        raise CliError(str(exc)) from exc
    with database_url() as url, connect(url, autocommit=True) as conn:
        try:
            Migrator(conn, log=print).migrate(dry_run=args.dry_run)
        except MigrationError as exc:
            raise CliError(str(exc)) from exc
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    from crm.tools.migrate import MigrationError, Migrator, status_lines

    with database_url() as url, connect(url, autocommit=True) as conn:
        try:
            entries = Migrator(conn).plan()
        except MigrationError as exc:
            raise CliError(str(exc)) from exc
    for line in status_lines(entries):
        print(line)
    broken = [e for e in entries if e.state in ("edited", "missing")]
    if broken:
        names = ", ".join(f"{e.name} ({e.state})" for e in broken)
        print(f"crm: error: applied migrations changed after release: {names}", file=sys.stderr)
        return 1
    return 0


def cmd_db_lint(args: argparse.Namespace) -> int:
    from crm.tools.lint import run_lint

    with database_url() as url, connect(url, autocommit=True) as conn:
        findings = run_lint(conn)
    for finding in findings:
        print(finding)
    if findings:
        print(f"crm: error: {len(findings)} security lint finding(s)", file=sys.stderr)
        return 1
    print("lint: no findings")
    return 0


# -- org / staff / token -------------------------------------------------------------------------
@contextlib.contextmanager
def account_errors() -> Iterator[None]:
    """`crm.orgs.accounts` refusals as the CLI reports them."""
    try:
        yield
    except accounts.InvalidEmail as exc:
        raise UsageError(str(exc)) from exc
    except (accounts.AccountError, supabase_auth.AuthAdminError) as exc:
        raise CliError(str(exc)) from exc


def cmd_org_create(args: argparse.Namespace) -> int:
    try:
        with database_url() as url, connect(url) as conn:
            org_id = accounts.create_org(conn, args.slug, args.name, args.country)
    except Conflict as exc:
        raise CliError(f"an organization with slug {args.slug!r} already exists") from exc
    except InvalidInput as exc:
        raise CliError(f"invalid organization: {exc.detail}") from exc
    except Unprocessable as exc:
        raise CliError(f"invalid organization: {exc.code}") from exc
    print(org_id)
    return 0


def cmd_staff_add(args: argparse.Namespace) -> int:
    with database_url() as url, connect(url) as conn, account_errors():
        print(accounts.add_staff(conn, args.org, args.email, args.role))
    return 0


def jwt_secret() -> str:
    secret = config.env("CRM_JWT_SECRET")
    if secret:
        return secret
    from crm.tools.embedded import dev_secrets

    return dev_secrets()["CRM_JWT_SECRET"]


def cmd_token(args: argparse.Namespace) -> int:
    from crm.auth import mint_token

    if args.ttl <= 0:
        raise UsageError("--ttl must be a positive number of seconds")
    try:
        with database_url() as url, connect(url) as conn:
            email = accounts.user_email(conn, args.user)
    except InvalidInput as exc:
        raise UsageError(f"--user is not a uuid: {args.user!r}") from exc
    if email is None:
        raise CliError(f"no user with id {args.user}")
    print(mint_token(args.user, email, jwt_secret(), ttl=args.ttl,
                     issuer=config.env("CRM_JWT_ISSUER")))
    return 0


# -- jobs ----------------------------------------------------------------------------------------
def cmd_jobs_run(args: argparse.Namespace) -> int:
    from crm import jobs
    from crm.db import job_database
    from crm.tools.embedded import apply_dev_settings

    apply_dev_settings()  # a second terminal next to `crm dev` uses its image store and public URL
    registry = jobs.load_all()
    job = registry.get(args.name)
    if job is None:
        known = ", ".join(sorted(registry)) or "none"
        raise UsageError(f"unknown job {args.name!r} (known: {known})")
    given = {"apply": args.apply or None, "limit": args.limit, "report": args.report}
    try:  # only what was given: a job without --apply refuses it instead of ignoring it
        options = job.make_options({"progress": sys.stderr.isatty(),
                                    **{k: v for k, v in given.items() if v is not None}})
    except jobs.OptionsError as exc:
        raise UsageError(str(exc)) from exc
    job.check_settings()  # every setting this job reads, and none of the others'
    with database_url() as url:
        db = job_database(url)  # run by hand or by a scheduler: the job deadlines
        db.open()
        try:
            summary = job.fn(db, options)
        finally:
            db.close()
    print(json.dumps(summary, indent=2, default=str))
    return 0


# -- worker and webhooks out ---------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    from crm.db import job_database
    from crm.tools.embedded import apply_dev_settings
    from crm.worker import Worker, default_jobs

    apply_dev_settings()
    with database_url() as url:
        # The job deadlines; a connection for each job's thread at once, and two more for dispatch-outbox's.
        db = job_database(url, max_size=len(args.jobs or default_jobs()) + 2)
        db.open()
        try:
            try:
                worker = Worker(db, args.jobs)
            except KeyError as exc:
                raise UsageError(exc.args[0]) from exc
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: worker.stopping.set())
            worker.start()
            print(f"crm worker: running {', '.join(worker.names)} (SIGTERM stops)", file=sys.stderr, flush=True)
            worker.wait()
            worker.stop()
        finally:
            db.close()
    if worker.failure:
        raise CliError(worker.failure)
    return 0


def _webhook_call(call: Callable[[psycopg.Connection], Any], missing: str = "not found") -> Any:
    try:
        with database_url() as url, connect(url) as conn:
            row = call(conn)
    except InvalidInput as exc:  # a malformed id or timestamp on the command line
        raise UsageError(exc.detail) from exc
    if row is None:
        raise CliError(missing)
    return row


def cmd_webhooks_add(args: argparse.Namespace) -> int:
    from crm.tools.embedded import apply_dev_settings

    apply_dev_settings()  # next to `crm dev`: its loopback receivers are allowed here too
    endpoint = _webhook_call(lambda conn: manage.add_endpoint(
        conn, args.org, args.url, event_types=args.event_type or [], description=args.description,
        allow_loopback=config.env_flag("CRM_WEBHOOK_ALLOW_LOOPBACK")),
        missing=f"no organization with slug {args.org!r}")
    print(json.dumps(endpoint, indent=2, default=str))
    return 0


def cmd_webhooks_retry(args: argparse.Namespace) -> int:
    print(json.dumps(_webhook_call(lambda conn: manage.retry_delivery(conn, args.delivery_id)),
                     indent=2, default=str))
    return 0


def cmd_webhooks_replay(args: argparse.Namespace) -> int:
    print(_webhook_call(lambda conn: manage.replay(conn, args.endpoint_id, args.since, args.until)))
    return 0


def add_webhook_commands(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help="run jobs continuously until SIGTERM (default: all scheduled ones)")
    worker.add_argument("jobs", nargs="*", metavar="JOB")
    worker.set_defaults(fn=cmd_worker)

    hooks = sub.add_parser("webhooks", help="outgoing webhook endpoints and deliveries").add_subparsers(
        dest="webhooks_command", required=True, parser_class=_Parser)
    add = hooks.add_parser("add", help="add an endpoint to an org; prints it with its secret (shown once)")
    add.add_argument("--org", required=True, help="organization slug")
    add.add_argument("--url", required=True)
    add.add_argument("--event-type", action="append", help="only this event type (repeatable; default: all)")
    add.add_argument("--description", default=None)
    add.set_defaults(fn=cmd_webhooks_add)
    retry = hooks.add_parser("retry", help="send a delivery again now (same webhook-id)")
    retry.add_argument("delivery_id")
    retry.set_defaults(fn=cmd_webhooks_retry)
    replay = hooks.add_parser("replay", help="queue an endpoint's events since T again; prints how many")
    replay.add_argument("endpoint_id")
    replay.add_argument("--since", required=True, help="timestamp, e.g. 2026-01-31T12:00Z")
    replay.add_argument("--until", default=None, help="timestamp (default: now)")
    replay.set_defaults(fn=cmd_webhooks_replay)


# -- import (SPEC 13) ----------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crm.imports.read import FileError, parse_map
    from crm.imports.run import ImportError_, run_import

    try:
        mapping = parse_map(args.map or [], args.kind)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such file: {args.file}")
    with database_url() as url, connect(url, autocommit=True) as conn:
        try:
            report = run_import(conn, args.kind, path, args.org, apply=args.apply, mapping=mapping,
                                progress=sys.stderr.isatty())
        except (FileError, ImportError_) as exc:
            raise CliError(f"{args.file}: {exc}") from None
        except KeyboardInterrupt:
            raise CliError("interrupted: every committed batch is whole and nothing else was written;"
                           " run the same command again to resume") from None
    full = report.as_json()
    if args.report:
        try:
            Path(args.report).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write the report {args.report}: {exc.strerror or exc}") from None
        full = {k: v for k, v in full.items() if k != "bad_rows"} | {"report": args.report}
    print(json.dumps(full, indent=2, ensure_ascii=False))
    return 0


def add_import_command(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser("import", help="import legacy customers, leads or orders (dry run unless --apply)")
    imp.add_argument("kind", choices=("customers", "leads", "orders"))
    imp.add_argument("file", help="CSV with a header row, a JSON array, or JSON lines")
    imp.add_argument("--org", required=True, help="organization slug")
    imp.add_argument("--apply", action="store_true", help="write (default: a dry run that changes nothing)")
    imp.add_argument("--report", default=None, help="write the full JSON report (every bad row) to this file")
    imp.add_argument("--map", nargs="+", metavar="OLD=NEW", action="extend",
                     help="rename the file's columns to ours, e.g. --map Telefon=phone Name=full_name")
    imp.set_defaults(fn=cmd_import)


# -- dev -----------------------------------------------------------------------------------------
def cmd_dev(args: argparse.Namespace) -> int:
    from crm.tools.devserver import run_dev

    with account_errors():
        return run_dev(port=args.port, host=args.host, jobs=not args.no_jobs, demo=not args.no_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crm", description="Booking → CRM backend on Postgres.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    dev = sub.add_parser("dev", help="run everything locally (embedded Postgres unless DATABASE_URL)")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--no-jobs", action="store_true", help="do not run the scheduled jobs in-process")
    dev.add_argument("--no-demo", action="store_true", help="do not create the demo organization")
    dev.set_defaults(fn=cmd_dev)

    db = sub.add_parser("db", help="migrations and the security lint").add_subparsers(
        dest="db_command", required=True, parser_class=_Parser)
    migrate = db.add_parser("migrate", help="apply pending migrations and changed repeatable files")
    migrate.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    migrate.set_defaults(fn=cmd_db_migrate)
    db.add_parser("status", help="every file: applied / pending / changed").set_defaults(fn=cmd_db_status)
    db.add_parser("lint", help="security lint; exit 1 on any finding").set_defaults(fn=cmd_db_lint)

    org = sub.add_parser("org", help="organizations").add_subparsers(
        dest="org_command", required=True, parser_class=_Parser)
    org_create = org.add_parser("create", help="create an organization; prints its id")
    org_create.add_argument("slug")
    org_create.add_argument("--name", required=True)
    org_create.add_argument("--country", default="DE", help="ISO 3166 alpha-2 (default DE)")
    org_create.set_defaults(fn=cmd_org_create)

    staff = sub.add_parser("staff", help="staff members").add_subparsers(
        dest="staff_command", required=True, parser_class=_Parser)
    staff_add = staff.add_parser("add", help="add a user (created if needed) to an org; prints the user id")
    staff_add.add_argument("--org", required=True, help="organization slug")
    staff_add.add_argument("--email", required=True)
    staff_add.add_argument("--role", required=True, choices=ROLES)
    staff_add.set_defaults(fn=cmd_staff_add)

    token = sub.add_parser("token", help="print a Supabase-style access token for a user")
    token.add_argument("--user", required=True, help="user uuid")
    token.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")
    token.set_defaults(fn=cmd_token)

    jobs = sub.add_parser("jobs", help="scheduled jobs").add_subparsers(
        dest="jobs_command", required=True, parser_class=_Parser)
    run = jobs.add_parser("run", help="run one job once and print its JSON summary")
    run.add_argument("name")
    run.add_argument("--apply", action="store_true", help="for jobs with a dry run: perform it")
    run.add_argument("--limit", type=int, default=None, help="at most this many items")
    run.add_argument("--report", default=None, help="write the JSON report to this file")
    run.set_defaults(fn=cmd_jobs_run)
    add_webhook_commands(sub)
    add_import_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CRM_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print(error_line(exc), file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("crm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
