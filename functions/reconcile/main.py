"""`POST /reconcile/{name}`: run one scheduled job (SPEC §8), for an external scheduler.

Authenticated by `X-Cron-Secret` (constant-time comparison); the job runs through the same
registry as `crm jobs run NAME` (its transactions as service_role, SPEC §6.1), on the job
deadlines and a pool of its own (`get_job_database`), not on the request ones, and returns its JSON
summary. The deployment serves `CRM_RECONCILE_JOBS` (comma-separated; default every job) and
checks at import every setting those jobs declare, and no other job's, so a misconfigured
deployment refuses to start with a message naming the variable instead of answering 500 on each
run. Query parameters are the job's options (`limit`, `apply`, ...), validated by its model.
"""

import hmac

import flask
import functions_framework

from crm import config, jobs
from crm.db import get_job_database
from crm.errors import BadRequest, CronSecretRefused, NotFound
from crm.http import endpoint, json_response, prepare_deployment, require_method

prepare_deployment()  # problem+json for the framework's own errors; crm.server, not gunicorn
config.database_url()  # fail at startup, naming the variable, rather than on the first request
CRON_SECRET = config.require("CRM_CRON_SECRET")
JOBS = jobs.served(config.env("CRM_RECONCILE_JOBS"))
for _job in JOBS.values():
    _job.check_settings(deployed=True)


@functions_framework.http
@endpoint
def reconcile(request: flask.Request) -> flask.Response:
    parts = [p for p in request.path.split("/") if p]
    if len(parts) != 1 and not (len(parts) == 2 and parts[0] == "reconcile"):
        raise NotFound(f"No route for {request.method} {request.path}: use POST /reconcile/{{job}}.")
    require_method(request, "POST")
    given = request.headers.get("X-Cron-Secret", "")
    if not hmac.compare_digest(given.encode(), CRON_SECRET.encode()):
        raise CronSecretRefused("A valid X-Cron-Secret header is required.")
    name = parts[-1]
    job = JOBS.get(name)
    if job is None:
        raise NotFound(f"No job named {name!r}." if name not in jobs.REGISTRY
                       else f"The job {name!r} is not served here (CRM_RECONCILE_JOBS).")
    args = {k: v for k, v in request.args.items() if k != "progress"}  # no terminal here
    try:
        options = job.make_options({**args, "progress": False})
    except jobs.OptionsError as exc:
        raise BadRequest(str(exc)) from None
    return json_response(job.fn(get_job_database(), options))
