"""`crm worker [JOB ...]` (SPEC 4, 8): jobs run continuously until SIGTERM.

A job with a `serve` function (dispatch-outbox) runs it in its own thread: it waits for work
itself (LISTEN/NOTIFY, a poll). Every other job runs on its schedule (`every_seconds`; a job named
explicitly that has none runs every minute) in one scheduler thread. Stopping lets each finish
what it holds (dispatch-outbox: the requests in flight) and returns. A job missing a required
setting (`ConfigError`) stops the whole worker with that message: a misconfigured worker should
not look healthy. Any number of workers may
run at once: every job claims its work with SKIP LOCKED.
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
    def __init__(self, db: Database, names: list[str] | None = None):
        registry = jobs.load_all()
        self.names = list(dict.fromkeys(names or default_jobs()))
        unknown = [n for n in self.names if n not in registry]
        if unknown:
            raise KeyError(f"unknown job {unknown[0]!r} (known: {', '.join(sorted(registry))})")
        self.db = db
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.failure: str | None = None  # a setting a job cannot run without: the worker stops

    def start(self) -> Worker:
        periodic = []
        for name in self.names:
            job = jobs.REGISTRY[name]
            if job.serve is not None:
                self.threads.append(threading.Thread(target=self._serve, args=(job,), name=f"crm-{name}",
                                                     daemon=True))
            else:
                periodic.append(job)
        if periodic:
            self.threads.append(threading.Thread(target=self._schedule, args=(periodic,), name="crm-jobs",
                                                 daemon=True))
        for thread in self.threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=timeout)

    def wait(self) -> None:
        while not self.stopping.is_set():
            self.stopping.wait(1.0)

    def _serve(self, job: jobs.Job) -> None:
        assert job.serve is not None
        while not self.stopping.is_set():
            try:
                job.serve(self.db, self.stopping)
            except ConfigError as exc:
                self.failure = f"{job.name}: {exc}"
                self.stopping.set()
            except Exception:
                log.exception("job %s stopped unexpectedly; restarting in 5 s", job.name)
                self.stopping.wait(5.0)

    def _schedule(self, periodic: list[jobs.Job]) -> None:
        due = {job.name: 0.0 for job in periodic}
        while not self.stopping.is_set():
            for job in periodic:
                if self.stopping.is_set() or time.monotonic() < due[job.name]:
                    continue
                try:
                    summary = job.fn(self.db, {"apply": True, "progress": False})
                    log.info("job %s: %s", job.name, summary)
                except ConfigError as exc:
                    self.failure = f"{job.name}: {exc}"
                    self.stopping.set()
                    return
                except Exception:
                    log.exception("job %s failed; retrying on its next turn", job.name)
                due[job.name] = time.monotonic() + (job.every_seconds or DEFAULT_EVERY)
            self.stopping.wait(1.0)


def start_continuous(db: Database) -> Worker:
    """For `crm dev`: the jobs that run continuously (its JobRunner runs the scheduled ones)."""
    return Worker(db, sorted(n for n, j in jobs.load_all().items() if j.serve)).start()
