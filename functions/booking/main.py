"""`POST /booking` (SPEC §7.1): the public booking form's front door.

Deploy: `functions-framework --source functions/booking/main.py --target booking`. Needs only
`DATABASE_URL`; `CRM_TRUSTED_PROXIES`, `CRM_BOOKING_RATE_LIMIT` and `CRM_BOOKING_RATE_WINDOW` tune the
abuse limits (see `crm.booking.intake`). Validation and the one SQL call live in `crm.booking.intake`.
"""

import flask
import functions_framework

from crm import config
from crm.booking import intake
from crm.db import get_database
from crm.errors import NotFound
from crm.http import endpoint, json_response, prepare_deployment, read_json, require_method

prepare_deployment()  # problem+json for the framework's own errors; crm.server, not gunicorn
# Fail at startup, naming the variable, rather than with a 500 on every request. The values are still
# read per request (cheap), so these calls only prove they parse.
config.database_url()
intake.RateLimit.from_env()
intake.trusted_proxies()


@functions_framework.http
@endpoint
def booking(request: flask.Request) -> flask.Response:
    if request.path not in ("", "/"):
        raise NotFound(f"No route for {request.method} {request.path}.")
    require_method(request, "POST")
    key = intake.idempotency_key(request.headers.get("Idempotency-Key"))
    body = read_json(request)
    client = intake.client_network(request.remote_addr, request.headers.get("X-Forwarded-For"))
    result = intake.submit(get_database(), body, idempotency_key=key, client=client)
    # The tracking token is a bearer secret: no cache may keep it.
    headers = {"Cache-Control": "no-store"}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(result.body, status=201, headers=headers)
