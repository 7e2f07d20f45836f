"""Scheduled jobs (SPEC §8): one registry for `crm jobs run NAME`, `POST /reconcile/{name}` and
the in-process scheduler of `crm dev`.

A job is `fn(db, options) -> dict` returning a JSON-able summary. Modules register their jobs
with `@job(...)`; `load_all()` imports every module that defines jobs.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crm.db import Database

JobFn = Callable[[Database, dict[str, Any]], dict[str, Any]]
#: A job that can also run continuously (`crm worker`): serve until the event is set.
ServeFn = Callable[[Database, threading.Event], None]

# Modules that register jobs when imported; later issues append theirs here.
JOB_MODULES: list[str] = ["crm.images.jobs", "crm.booking.intake", "crm.outbox.jobs", "crm.inbox.jobs",
                          "crm.sessions.jobs", "crm.imports.pull", "crm.wms.reconcile"]


@dataclass(frozen=True)
class Job:
    name: str
    fn: JobFn
    description: str
    every_seconds: float | None  # how often `crm dev` runs it; None = only on demand
    serve: ServeFn | None = None  # runs continuously under `crm worker` / `crm dev` instead


REGISTRY: dict[str, Job] = {}


def job(name: str, *, description: str, every_seconds: float | None = None,
        serve: ServeFn | None = None) -> Callable[[JobFn], JobFn]:
    def register(fn: JobFn) -> JobFn:
        REGISTRY[name] = Job(name, fn, description, every_seconds, serve)
        return fn

    return register


def load_all() -> dict[str, Job]:
    for module in JOB_MODULES:
        importlib.import_module(module)
    return REGISTRY
