"""Scheduled jobs (SPEC §8): one registry for `crm jobs run NAME`, `POST /reconcile/{name}`,
`crm worker` and the in-process scheduler of `crm dev`.

A job is `fn(db, options) -> dict` returning a JSON-able summary, where `options` is the job's own
pydantic model (`JobOptions` or a subclass: unknown or mistyped options are refused, not ignored).
A job registers itself where it is defined, with `@job(...)`, naming its options model and a
`check` that reads and validates every setting it needs, so whoever runs it (a deployed function
at startup, the CLI before running) refuses a misconfiguration with a message naming the variable.
Each capability's jobs live in its package; `load_all()` imports them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crm.db import Database
from crm.errors import ConfigError


class JobOptions(BaseModel):
    """What every job takes: whether to draw a progress bar (a terminal is watching)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    progress: bool = False


class LimitOptions(JobOptions):
    limit: int | None = Field(default=None, ge=1, description="at most this many items")


class ApplyOptions(LimitOptions):
    apply: bool = Field(default=False, description="perform it (else a dry run)")
    report: str | None = Field(default=None, description="write the JSON report to this file")


class OptionsError(ValueError):
    """Options a job does not take, or of the wrong type (a usage error: CLI exit 2, HTTP 400)."""


JobFn = Callable[[Database, Any], dict[str, Any]]
#: A job that can also run continuously (`crm worker`): serve until the event is set.
ServeFn = Callable[[Database, threading.Event], None]


def no_settings() -> None:
    """A job that reads no setting of its own."""


@dataclass(frozen=True)
class Job:
    name: str
    fn: Callable[..., dict[str, Any]]  # fn(db, options model | mapping | None)
    description: str
    every_seconds: float | None  # how often `crm dev` / `crm worker` run it; None = only on demand
    serve: ServeFn | None = None  # runs continuously under `crm worker` / `crm dev` instead
    options: type[JobOptions] = JobOptions
    check: Callable[[], None] = no_settings  # raises ConfigError naming a missing or malformed setting
    deployed_check: Callable[[], None] = no_settings  # what a long-running deployment needs besides

    def make_options(self, given: Mapping[str, Any] | JobOptions | None = None) -> JobOptions:
        if isinstance(given, self.options):
            return given
        if isinstance(given, JobOptions):
            given = given.model_dump(exclude_unset=True)
        try:
            return self.options.model_validate(dict(given or {}))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
            raise OptionsError(f"{self.name}: {problems}") from None

    def check_settings(self, *, deployed: bool = False) -> None:
        """Every setting the job reads (ConfigError naming the first bad one). `deployed`: also what
        a deployment serving it for good must have, e.g. CRM_SECRETS_KEY for jobs that open
        integration secrets, which a one-off run on a database without integrations can do without."""
        self.check()
        if deployed:
            self.deployed_check()


REGISTRY: dict[str, Job] = {}


def job(name: str, *, description: str, every_seconds: float | None = None, serve: ServeFn | None = None,
        options: type[JobOptions] = JobOptions, check: Callable[[], None] = no_settings,
        deployed_check: Callable[[], None] = no_settings) -> Callable[[JobFn], Callable[..., dict[str, Any]]]:
    """Register `fn(db, options: <options>)` as the job `name`. The registered (and returned)
    callable takes the options model or a mapping of its fields, validated into the model."""

    def register(fn: JobFn) -> Callable[..., dict[str, Any]]:
        @functools.wraps(fn)
        def run(db: Database, given: Mapping[str, Any] | JobOptions | None = None) -> dict[str, Any]:
            return fn(db, REGISTRY[name].make_options(given))

        REGISTRY[name] = Job(name, run, description, every_seconds, serve, options, check, deployed_check)
        return run

    return register


def load_all() -> dict[str, Job]:
    """Every capability's jobs: each registers where it is defined, so importing is registering.
    A capability with jobs adds its import here."""
    from crm.booking import intake  # noqa: F401
    from crm.images import jobs as images  # noqa: F401
    from crm.imports import pull  # noqa: F401
    from crm.inbox import jobs as inbox  # noqa: F401
    from crm.outbox import jobs as outbox  # noqa: F401
    from crm.sessions import jobs as sessions  # noqa: F401
    from crm.wms import reconcile  # noqa: F401

    return REGISTRY


def served(names: str | None) -> dict[str, Job]:
    """The jobs a deployment serves: a comma-separated list (`CRM_RECONCILE_JOBS`), or every job."""
    registry = load_all()
    if not names or not names.strip():
        return dict(registry)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in registry]
    if unknown:
        raise ConfigError(f"CRM_RECONCILE_JOBS names no job {unknown[0]!r} (known: {', '.join(sorted(registry))})")
    return {n: registry[n] for n in chosen}
