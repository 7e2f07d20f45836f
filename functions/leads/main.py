"""`PATCH /leads/{id}` (SPEC §7.3): staff change a lead's status, note or assignee.

Deployed alone (`functions-framework --source functions/leads/main.py --target leads`) the path
may arrive as `/<id>` or `/leads/<id>`; `crm dev` mounts it under `/leads`. Any other path
(no id, or more segments) is a 404.
"""

import flask
import functions_framework

from crm import auth, config
from crm.db import get_database
from crm.errors import NotFound
from crm.http import endpoint, json_response, prepare_deployment, read_json, require_method
from crm.leads.patch import lead_ref, parse_patch, patch_lead

prepare_deployment()  # problem+json for the framework's own errors; crm.server, not gunicorn
# Fail at startup, naming the variable, rather than on the first request.
config.database_url()
auth.get_verifier()


@functions_framework.http
@endpoint
def leads(request: flask.Request) -> flask.Response:
    parts = [p for p in request.path.split("/") if p]
    if len(parts) != 1 and not (len(parts) == 2 and parts[0] == "leads"):
        raise NotFound(f"No route for {request.method} {request.path}: use PATCH /leads/{{id}}.")
    require_method(request, "PATCH")
    claims = auth.authenticate(request.headers.get("Authorization"))
    ref = lead_ref(parts[-1])
    patch = parse_patch(read_json(request))
    return json_response(patch_lead(get_database(), claims, ref, patch))
