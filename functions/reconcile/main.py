"""`POST /reconcile/{name}`: run one scheduled job (SPEC §8), for an external scheduler.

Authenticated by `X-Cron-Secret` (constant-time comparison); the job runs through the same
registry as `crm jobs run NAME` (its transactions as service_role, SPEC §6.1) and returns its JSON
summary. Every setting a job reads is checked at import, so a misconfigured deployment refuses to
start with a message naming the variable instead of answering 500 on each run.
"""

import hmac

import flask
import functions_framework

from crm import config, jobs
from crm.db import get_database
from crm.errors import BadRequest, CronSecretRefused, NotFound
from crm.http import endpoint, json_response, prepare_deployment, require_method
from crm.images import jobs as image_jobs

prepare_deployment()  # problem+json for the framework's own errors; crm.server, not gunicorn
config.database_url()  # fail at startup, naming the variable, rather than on the first request
CRON_SECRET = config.require("CRM_CRON_SECRET")
image_jobs.check_config()
JOBS = jobs.load_all()


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
        raise NotFound(f"No job named {name!r}.")
    try:
        limit = int(request.args["limit"]) if "limit" in request.args else None
    except ValueError:
        raise BadRequest("limit must be a whole number.") from None
    options = {"apply": request.args.get("apply", "").lower() in ("1", "true", "yes"),
               "limit": limit, "progress": False}
    return json_response(job.fn(get_database(), options))
