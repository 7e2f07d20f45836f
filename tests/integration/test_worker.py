"""`crm worker` and the jobs of `crm dev` (crm.worker): every job in a thread of its own, settings
checked before anything starts, a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crm import jobs
from crm.errors import ConfigError
from crm.worker import Worker
from tests.helpers import wait_until


def register(monkeypatch: pytest.MonkeyPatch, name: str, fn, *, every: float | None = 0.05, check=jobs.no_settings,
             options: type[jobs.JobOptions] = jobs.JobOptions) -> None:
    monkeypatch.setitem(jobs.REGISTRY, name, jobs.Job(name, fn, "a test job", every, options=options, check=check))


def test_a_job_with_a_dry_run_is_performed_by_the_worker(database, monkeypatch: pytest.MonkeyPatch) -> None:
    """`crm worker backfill-images` runs it for real (apply), as before typed options: never a dry run a minute."""
    jobs.load_all()
    seen: list[jobs.JobOptions] = []

    def applies(db, options):
        seen.append(options)
        return {"job": "test-apply"}

    register(monkeypatch, "test-apply", applies, every=None, options=jobs.ApplyOptions)
    register(monkeypatch, "test-plain", lambda db, options: seen.append(options) or {"job": "test-plain"})
    worker = Worker(database, ["test-apply", "test-plain"], strict=False).start()
    try:
        wait_until(lambda: {type(o) for o in seen} == {jobs.ApplyOptions, jobs.JobOptions}, 10, "both jobs ran")
    finally:
        worker.stop(timeout=10)
    assert all(o.apply for o in seen if isinstance(o, jobs.ApplyOptions))
    assert not any(o.progress for o in seen)


def test_a_slow_job_holds_up_no_other(database, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs.load_all()
    release, slow_started = threading.Event(), threading.Event()
    fast_runs: list[float] = []

    def slow(db, options):
        slow_started.set()
        release.wait(30)
        return {"job": "test-slow"}

    def fast(db, options):
        assert isinstance(options, jobs.JobOptions)
        fast_runs.append(time.monotonic())
        return {"job": "test-fast"}

    register(monkeypatch, "test-slow", slow)
    register(monkeypatch, "test-fast", fast)
    worker = Worker(database, ["test-slow", "test-fast"], strict=False).start()
    try:
        assert slow_started.wait(10), "the slow job never started"
        wait_until(lambda: len(fast_runs) >= 5, 10, "the fast job ran again and again while the slow one ran")
        assert not release.is_set()
    finally:
        release.set()
        worker.stop(timeout=10)
    assert not any(t.is_alive() for t in worker.threads)


def test_settings_are_checked_before_anything_starts(database, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs.load_all()
    runs: list[str] = []

    def needs_a_setting() -> None:
        raise ConfigError("CRM_TEST_SETTING is not set")

    register(monkeypatch, "test-misconfigured", lambda db, o: runs.append("bad") or {}, check=needs_a_setting)
    register(monkeypatch, "test-fine", lambda db, o: runs.append("fine") or {})
    # crm worker: refuses at once, naming the job and the variable, and runs nothing.
    with pytest.raises(ConfigError, match="test-misconfigured: CRM_TEST_SETTING"):
        Worker(database, ["test-misconfigured", "test-fine"])
    assert runs == []
    # crm dev: that job stays off, the others run.
    worker = Worker(database, ["test-misconfigured", "test-fine"], strict=False)
    assert worker.names == ["test-fine"] and "CRM_TEST_SETTING" in worker.disabled["test-misconfigured"]
    worker.start()
    try:
        wait_until(lambda: "fine" in runs, 10, "the well-configured job ran")
    finally:
        worker.stop(timeout=10)
    assert "bad" not in runs


def test_crm_worker_stops_cleanly_on_sigterm(db_url: str, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("crm")
    log = tmp_path / "worker.log"
    env = {**os.environ, "DATABASE_URL": db_url, "CRM_LOG_LEVEL": "INFO"}
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), "worker", "purge-booking-state", "mark-no-shows"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: log.read_text().count("job ") >= 2, 30, "both jobs ran once")
        assert "running purge-booking-state, mark-no-shows" in log.read_text()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 5  # between runs a job waits on the stop event, not a sleep
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()
