"""dispatch-outbox (SPEC 8, 9): outbox events out to webhook endpoints, signed, leased, retried.

One `Dispatcher` per process. Its loop (one thread) does the queue's moves:
- seals secrets the RPCs just generated (the database never has `CRM_SECRETS_KEY`);
- fans queued outbox events out into deliveries (one statement per 1,000 events);
- claims due deliveries into the free slots of a thread pool with one `for update skip locked`
  UPDATE that leases them to this worker (`locked_until`, `lease_token`; the shared leased queue of
  db/functions/000_work_queue.sql), and renews the leases of what is still in flight, so a slow
  receiver never makes a delivery claimable twice while its worker lives, and a killed worker's
  deliveries are claimed again once their lease runs out;
- a recorder thread, on a connection of its own, writes finished attempts in batches
  (`private.webhook_record_attempts`: the retry schedule, Retry-After, 410 and the five-day rule
  are SQL), so claiming and recording go on side by side.
Sending runs in the pool with no transaction open: the outbox payload's exact text is signed
(Standard Webhooks, `standardwebhooks` library, one signature per live secret) and POSTed through
`crm.net.SafePoster`. The webhook-id is the outbox event id, the same on every attempt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from standardwebhooks import Webhook

from crm import config, queries
from crm.db import Database
from crm.errors import ConfigError, CrmError
from crm.net import PostPolicy, SafePoster
from crm.progress import progress_bar
from crm.sealing import SealError, SecretBox

log = logging.getLogger("crm.outbox")

FANOUT_BATCH = 1000
# Outbox writers do not NOTIFY while the serving loop is awake (db/triggers/outbox.sql): a loop kept
# busy by deliveries fans new events out at this interval instead of waiting for its poll.
AWAKE_FANOUT_SECONDS = 0.2
RETRY_AFTER_STATUSES = frozenset({429, 502, 503, 504})


def _number(name: str, default: float, minimum: float) -> float:
    raw = config.env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


@dataclass(frozen=True)
class DispatchSettings:
    concurrency: int = 32  # requests in flight per worker
    batch: int = 200  # most deliveries claimed per statement
    timeout: float = 15.0  # the whole exchange with a receiver (SPEC 9: 2xx within 15 s)
    lease_seconds: float = 60.0  # renewed every third of it while in flight
    poll_seconds: float = 5.0  # fallback when no NOTIFY comes (or no LISTEN: transaction pooler)
    allow_loopback: bool = False
    listen: bool = True

    @classmethod
    def from_env(cls) -> DispatchSettings:
        timeout = _number("CRM_WEBHOOK_TIMEOUT", 15.0, 0.1)
        pooled = (config.env("CRM_DB_POOLER") or "").lower() == "transaction"
        return cls(
            concurrency=int(_number("CRM_WEBHOOK_CONCURRENCY", 32, 1)),
            batch=int(_number("CRM_WEBHOOK_BATCH", 200, 1)),
            timeout=timeout,
            lease_seconds=_number("CRM_WEBHOOK_LEASE_SECONDS", max(60.0, 4 * timeout), 1),
            poll_seconds=_number("CRM_WEBHOOK_POLL_SECONDS", 1.0 if pooled else 5.0, 0.05),
            allow_loopback=config.env_flag("CRM_WEBHOOK_ALLOW_LOOPBACK"),
            listen=not pooled,
        )


def secret_context(endpoint_id: Any, secret_id: Any) -> str:
    """Associated data of a sealed endpoint secret: it opens only on its own row."""
    return f"webhook_secret:{endpoint_id}:{secret_id}"


class Dispatcher:
    def __init__(self, db: Database, settings: DispatchSettings | None = None, *,
                 poster: SafePoster | None = None, box: SecretBox | None = None):
        self.db = db
        self.settings = settings or DispatchSettings.from_env()
        self.box = box or SecretBox.from_env()
        s = self.settings
        self.poster = poster or SafePoster(PostPolicy(allow_loopback=s.allow_loopback, timeout=s.timeout,
                                                      connect_timeout=min(5.0, s.timeout),
                                                      max_connections=s.concurrency))
        self.token = uuid.uuid4()  # this worker's lease token
        self.pool = ThreadPoolExecutor(s.concurrency, thread_name_prefix="crm-webhook")
        self.lock = threading.Lock()
        self.inflight: set[str] = set()  # claimed and not yet recorded (lock)
        self.sending = 0  # requests running now (lock)
        self.finished: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.wake = threading.Event()  # a result, a NOTIFY, or stop
        self.notified = threading.Event()  # new events or secrets: fan out / seal now
        self.recorder: threading.Thread | None = None
        self.recorder_stop = threading.Event()
        self.signers: dict[tuple[str, int], list[tuple[Webhook, datetime | None]]] = {}
        self.stats: Counter[str] = Counter()
        self.last_renewal = time.monotonic()
        self.last_fan_out = 0.0

    def close(self) -> None:
        self._stop_recorder()
        self.pool.shutdown(wait=True)
        self.poster.close()

    # -- database moves of the loop's thread ------------------------------------------------------
    def seal_secrets(self) -> int:
        with self.db.transaction("service_role") as s:
            rows = s.fetch_all("outbox_pending_secrets")
            for r in rows:
                s.execute("outbox_seal_secret", {
                    "id": r["id"], "sealed": self.box.seal(r["pending"], secret_context(r["endpoint_id"], r["id"]))})
        self.stats["secrets_sealed"] += len(rows)
        return len(rows)

    def fan_out(self) -> int:
        self.last_fan_out = time.monotonic()
        events = 0
        while True:
            with self.db.transaction("service_role") as s:
                row = s.fetch_one("outbox_fan_out", {"limit": FANOUT_BATCH})
            events += row["events"]
            self.stats["events"] += row["events"]
            self.stats["deliveries_created"] += row["deliveries"]
            if row["events"] < FANOUT_BATCH:
                return events

    def claim(self, limit: int) -> int:
        with self.db.transaction("service_role") as s:
            rows = s.fetch_all("outbox_claim", {"limit": limit, "token": self.token,
                                                "lease_seconds": self.settings.lease_seconds})
            wanted = {(str(r["endpoint_id"]), r["secret_version"]) for r in rows} - self.signers.keys()
            if wanted:
                secrets = s.fetch_all("outbox_live_secrets", {"endpoint_ids": [e for e, _ in wanted]})
        if wanted:
            self._load_signers(wanted, secrets)
        for row in rows:
            with self.lock:
                self.inflight.add(str(row["id"]))
                self.sending += 1
            self.pool.submit(self._send, row, self.signers.get((str(row["endpoint_id"]), row["secret_version"]), []))
        self.stats["claimed"] += len(rows)
        return len(rows)

    def _load_signers(self, wanted: set[tuple[str, int]], rows: list[dict[str, Any]]) -> None:
        by_endpoint: dict[str, list[tuple[Webhook, datetime | None]]] = {e: [] for e, _ in wanted}
        for r in rows:
            endpoint = str(r["endpoint_id"])
            try:
                secret = r["pending"] or self.box.open(r["sealed"], secret_context(endpoint, r["id"]))
                by_endpoint[endpoint].append((Webhook(secret), r["expires_at"]))
            except (SealError, ValueError) as exc:
                log.error("webhook secret %s of endpoint %s cannot be used: %s", r["id"], endpoint, exc)
        for key in [k for k in self.signers if k[0] in by_endpoint]:
            del self.signers[key]  # an older version of a rotated endpoint
        for endpoint, version in wanted:
            self.signers[(endpoint, version)] = by_endpoint[endpoint]

    def renew_leases(self) -> None:
        with self.lock:
            ids = list(self.inflight)
        self.last_renewal = time.monotonic()
        if ids:
            with self.db.transaction("service_role") as s:
                s.execute("outbox_renew_leases", {"token": self.token, "ids": ids,
                                                  "lease_seconds": self.settings.lease_seconds})

    def next_due(self) -> float | None:
        with self.db.transaction("service_role") as s:
            return s.fetch_one("outbox_next_due", {"token": self.token})["seconds"]

    # -- recording (its own thread, so claims and results travel side by side) -----------------------
    def _start_recorder(self) -> None:
        if self.recorder is None:
            self.recorder_stop.clear()
            self.recorder = threading.Thread(target=self._record_loop, name="crm-outbox-record", daemon=True)
            self.recorder.start()

    def _stop_recorder(self) -> None:
        if self.recorder is not None:
            self.recorder_stop.set()
            self.recorder.join(timeout=30)
            self.recorder = None

    def _record_loop(self) -> None:
        pending: list[dict[str, Any]] = []
        while True:
            if not pending:
                try:
                    pending.append(self.finished.get(timeout=0.1))
                except queue.Empty:
                    if self.recorder_stop.is_set():
                        return
                    continue
            collect_until = time.monotonic() + 0.005  # whatever finishes meanwhile goes in the same write
            while len(pending) < self.settings.batch:
                try:
                    pending.append(self.finished.get(timeout=max(0.0, collect_until - time.monotonic())))
                except queue.Empty:
                    break
            try:
                self.record(pending)
            except CrmError as exc:
                if self.recorder_stop.is_set():
                    log.warning("dispatch-outbox: %d attempts unrecorded (their leases expire and they are"
                                " sent again): %s", len(pending), exc)
                    return
                log.warning("dispatch-outbox: cannot record attempts (%s); retrying", exc)
                time.sleep(0.5)
                continue
            pending = []

    def record(self, results: list[dict[str, Any]]) -> None:
        with self.db.transaction("service_role") as s:
            row = s.fetch_one("outbox_record_attempts", {"token": self.token, "results": json.dumps(results)})
        with self.lock:
            for r in results:
                self.inflight.discard(r["id"])
        for key in ("succeeded", "failed", "dead", "lost"):
            self.stats[key] += row[key]
        self.wake.set()

    # -- sending (pool threads) -----------------------------------------------------------------
    def _send(self, row: dict[str, Any], signers: list[tuple[Webhook, datetime | None]]) -> None:
        started = datetime.now(UTC)
        result: dict[str, Any] = {"id": str(row["id"]), "started_at": started.isoformat(), "duration_ms": 0,
                                  "status_code": None, "error": None, "retry_after": None}
        try:
            live = [w for w, expires in signers if expires is None or expires > started]
            if not live:
                result["error"] = "no live signing secret for this endpoint"
            else:
                msg_id = str(row["event_id"])
                stamp = datetime.fromtimestamp(int(started.timestamp()), UTC)
                body: str = row["body"]
                headers = {
                    "content-type": "application/json",
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(int(stamp.timestamp())),
                    "webhook-signature": " ".join(w.sign(msg_id, stamp, body) for w in live),
                }
                answer = self.poster.post(row["url"], body.encode("utf-8"), headers)
                result.update(duration_ms=answer.duration_ms, status_code=answer.status_code, error=answer.error)
                if answer.status_code in RETRY_AFTER_STATUSES:
                    result["retry_after"] = answer.retry_after()
        except Exception as exc:  # noqa: BLE001 - one bad delivery must not stop the worker
            log.exception("webhook delivery %s failed unexpectedly", row["id"])
            result["error"] = f"internal_error: {type(exc).__name__}: {exc}"
        with self.lock:
            self.sending -= 1
        self.finished.put(result)
        self.wake.set()

    # -- loops ----------------------------------------------------------------------------------
    def _busy(self) -> bool:
        with self.lock:
            return bool(self.inflight)

    def _step(self, housekeeping: bool) -> bool:
        worked = False
        if housekeeping:
            worked |= self.seal_secrets() > 0
            worked |= self.fan_out() > 0
        with self.lock:
            free = self.settings.concurrency - self.sending
            idle = self.sending == 0
        if free >= max(1, self.settings.concurrency // 4) or (free > 0 and idle):
            worked |= self.claim(min(free, self.settings.batch)) > 0
        if time.monotonic() - self.last_renewal > self.settings.lease_seconds / 3:
            self.renew_leases()
        return worked

    def _recorded(self) -> int:
        return sum(self.stats[k] for k in ("succeeded", "failed", "dead", "lost"))

    def run_once(self, limit: int | None = None, progress: bool = False) -> dict[str, Any]:
        """The scheduled job: everything due now, then return (later retries are the next run's).
        `progress`: a bar of recorded attempts on stderr (a terminal)."""
        self._start_recorder()
        bar = progress_bar(progress, "dispatch-outbox", unit="deliveries")
        try:
            self._step(housekeeping=True)
            progress_at = (time.monotonic(), -1)
            while limit is None or self.stats["claimed"] < limit:
                self.wake.clear()
                worked = self._step(housekeeping=False)
                bar.update(self._recorded() - bar.n)
                with self.lock:
                    left = len(self.inflight)
                if not worked and not left:
                    break
                if worked or left != progress_at[1]:
                    progress_at = (time.monotonic(), left)
                elif time.monotonic() - progress_at[0] > self.settings.timeout + 10:
                    log.warning("dispatch-outbox: %d attempts cannot be recorded; giving up this run", left)
                    break
                if not worked:
                    self.wake.wait(0.05)
        finally:
            self._drain()
            bar.update(self._recorded() - bar.n)
            bar.close()
        return self.summary()

    def serve(self, stop: threading.Event) -> None:
        """Until `stop`: woken by NOTIFY (or the poll), by recorded results and by due retries."""
        threading.Thread(target=lambda: (stop.wait(), self.wake.set()), name="crm-outbox-stop", daemon=True).start()
        self._start_recorder()
        listener = sleeper = None
        if self.settings.listen:
            listener = _Listener(self.db.url, self._on_notify, stop)
            listener.start()
            sleeper = _Sleeper(self.db.url)
        next_housekeeping = 0.0
        try:
            while not stop.is_set():
                self.wake.clear()
                now = time.monotonic()
                housekeeping = self.notified.is_set() or now >= next_housekeeping
                if housekeeping:
                    self.notified.clear()
                    next_housekeeping = now + self.settings.poll_seconds
                try:
                    worked = self._step(housekeeping)
                    if (sleeper is not None and not housekeeping
                            and time.monotonic() - self.last_fan_out >= AWAKE_FANOUT_SECONDS):
                        worked |= self.fan_out() > 0
                    if worked:
                        continue
                    timeout = max(0.0, next_housekeeping - time.monotonic())
                    if self._busy():
                        timeout = min(timeout, self.settings.lease_seconds / 3)
                    else:
                        due = self.next_due()
                        if due is not None:
                            timeout = min(timeout, max(0.01, due))
                except CrmError as exc:
                    log.warning("dispatch-outbox: %s; retrying in 1 s", exc)
                    timeout = 1.0
                if sleeper is None:
                    self.wake.wait(timeout)
                else:
                    self._sleep(sleeper, timeout)
        finally:
            self._drain()
            if listener is not None:
                listener.join(timeout=5)
            if sleeper is not None:
                sleeper.close()

    def _sleep(self, sleeper: _Sleeper, timeout: float) -> None:
        """Wait holding the sleep lock, so that outbox writers NOTIFY meanwhile (db/triggers/outbox.sql).
        Writers that did not are committed once the lock is ours: fan their events out first."""
        held = sleeper.acquire()
        if not held:
            # Another worker waits with it (writers NOTIFY, and we hear it), or a long writing
            # transaction holds it: then look again soon.
            self.wake.wait(timeout if sleeper.other_sleeps() else min(timeout, 0.25))
            return
        try:
            if self.fan_out() == 0:
                self.wake.wait(timeout)
        except CrmError as exc:
            log.warning("dispatch-outbox: %s", exc)
        finally:
            sleeper.release()

    def _drain(self) -> None:
        """Stop claiming; wait for what is in flight (at most the timeout) to be sent and recorded."""
        deadline = time.monotonic() + self.settings.timeout + 5
        while self._busy() and time.monotonic() < deadline:
            self.wake.wait(0.1)
            self.wake.clear()
            if time.monotonic() - self.last_renewal > self.settings.lease_seconds / 3:
                try:
                    self.renew_leases()
                except CrmError as exc:
                    log.warning("dispatch-outbox: cannot renew leases: %s", exc)
        self._stop_recorder()

    def _on_notify(self) -> None:
        self.notified.set()
        self.wake.set()

    def summary(self) -> dict[str, Any]:
        return {"job": "dispatch-outbox", **{k: self.stats[k] for k in (
            "events", "deliveries_created", "claimed", "succeeded", "failed", "dead", "lost", "secrets_sealed")}}


class _Listener(threading.Thread):
    """LISTEN crm_outbox on its own connection; reconnects, and wakes the loop after each (a NOTIFY
    sent while it was away is lost, so the loop looks for work then)."""

    def __init__(self, url: str, on_notify: Any, stop: threading.Event):
        super().__init__(name="crm-outbox-listen", daemon=True)
        self.url, self.on_notify, self.stop = url, on_notify, stop

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                     application_name="crm-outbox-listen") as conn:
                    conn.execute(queries.get("outbox_listen"))
                    self.on_notify()
                    while not self.stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self.on_notify()
            except psycopg.Error as exc:
                log.warning("dispatch-outbox: LISTEN connection lost (%s); polling until it is back", exc)
                self.stop.wait(2.0)


class _Sleeper:
    """The serving loop's side of the conditional NOTIFY (db/triggers/outbox.sql): a session
    connection of its own that holds the advisory lock `hidden.outbox_sleep_lock()` while the loop
    waits. Any failure only means waiting without it (writers then may not NOTIFY: the poll stays)."""

    def __init__(self, url: str):
        self.url = url
        self.conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                        application_name="crm-outbox-sleep", options="-c lock_timeout=250ms")
        return self.conn

    def acquire(self) -> bool:
        try:
            self._connection().execute(queries.get("outbox_sleep"))
            return True
        except psycopg.errors.LockNotAvailable:
            return False
        except psycopg.Error as exc:
            log.warning("dispatch-outbox: sleep lock unavailable (%s)", exc)
            self.close()
            return False

    def other_sleeps(self) -> bool:
        try:
            return bool(self._connection().execute(queries.get("outbox_sleeper_exists")).fetchone()[0])
        except psycopg.Error:
            self.close()
            return False

    def release(self) -> None:
        try:
            if self.conn is not None and not self.conn.closed:
                self.conn.execute(queries.get("outbox_wake"))
        except psycopg.Error:
            self.close()  # a closed session holds no lock

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = None
