"""`crm worker [JOB ...]` (SPEC 4, 8) and the jobs of `crm dev`: jobs run continuously until stopped.

Every job runs in a thread of its own, so a slow run of one (a warehouse reconciliation paging
through 100k items) never holds up another (the image cache every 3 s). A job with a `serve`
function (dispatch-outbox) runs that: it waits for work itself (LISTEN/NOTIFY, a poll). Every other
job runs on its schedule (`every_seconds`; a job named explicitly that has none runs every minute).
Stopping (SIGTERM) lets each finish the run it is in (dispatch-outbox: the requests in flight) and
returns. Every job's settings are checked before anything starts; under `crm worker` a job that
still meets a missing setting (`ConfigError`) stops the whole worker with that message, since a
misconfigured worker should not look healthy, while `crm dev` logs it and keeps the others running.
Any number of workers may run at once: every job claims its work with SKIP LOCKED.
"""

from __future__ import annotations

import logging
import threading
import time

from crm import jobs
from crm.db import Database
from crm.errors import ConfigError

log = logging.getLogger("crm.worker")

DEFAULT_EVERY = 60.0


def default_jobs() -> list[str]:
    return sorted(n for n, j in jobs.load_all().items() if j.serve or j.every_seconds)


class Worker:
    def __init__(self, db: Database, names: list[str] | None = None, *, strict: bool = True,
                 quiet: bool = False):
        """`strict`: a job missing a setting stops the worker (`crm worker`); else it is logged and
        that job alone stays off (`crm dev`). `quiet`: log a run's summary only when it did something."""
        registry = jobs.load_all()
        self.names = list(dict.fromkeys(names or default_jobs()))
        unknown = [n for n in self.names if n not in registry]
        if unknown:
            raise KeyError(f"unknown job {unknown[0]!r} (known: {', '.join(sorted(registry))})")
        self.db = db
        self.strict = strict
        self.quiet = quiet
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.failure: str | None = None  # a setting a job cannot run without: the worker stops
        self.disabled: dict[str, str] = {}  # non-strict: jobs kept off, and why
        for name in list(self.names):
            try:
                registry[name].check_settings(deployed=True)
            except ConfigError as exc:
                if strict:
                    raise ConfigError(f"{name}: {exc}") from None
                log.error("job %s stays off: %s", name, exc)
                self.disabled[name] = str(exc)
                self.names.remove(name)

    def start(self) -> Worker:
        for name in self.names:
            job = jobs.REGISTRY[name]
            target = self._serve if job.serve is not None else self._every
            self.threads.append(threading.Thread(target=target, args=(job,), name=f"crm-{name}", daemon=True))
        for thread in self.threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def wait(self) -> None:
        while not self.stopping.is_set():
            self.stopping.wait(1.0)

    def _config_failure(self, job: jobs.Job, exc: ConfigError) -> None:
        if self.strict:
            self.failure = f"{job.name}: {exc}"
            self.stopping.set()
        else:
            log.error("job %s stopped: %s", job.name, exc)
            self.disabled[job.name] = str(exc)

    def _serve(self, job: jobs.Job) -> None:
        assert job.serve is not None
        while not self.stopping.is_set():
            try:
                job.serve(self.db, self.stopping)
            except ConfigError as exc:
                self._config_failure(job, exc)
                return
            except Exception:
                log.exception("job %s stopped unexpectedly; restarting in 5 s", job.name)
                self.stopping.wait(5.0)

    def _every(self, job: jobs.Job) -> None:
        every = job.every_seconds or DEFAULT_EVERY
        # A worker performs what it runs: a job with a dry run (`apply`) is run for real.
        options = job.make_options({"apply": True} if "apply" in job.options.model_fields else None)
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                summary = job.fn(self.db, options)
                if not self.quiet or any(v for k, v in summary.items() if k != "job" and isinstance(v, int)):
                    log.info("job %s: %s", job.name, summary)
            except ConfigError as exc:
                self._config_failure(job, exc)
                return
            except Exception:
                log.exception("job %s failed; retrying on its next turn", job.name)
            self.stopping.wait(max(0.0, started + every - time.monotonic()))
