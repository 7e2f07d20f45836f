"""The machine API (SPEC 11): `X-Api-Key` clients such as the warehouse read customers and orders
and create leads. `GET /api/customers/{id}`, `GET /api/customers?q=`, `GET /api/orders/{id or
order_code}`, `POST /api/leads`.

Deployed alone (`functions-framework --source functions/api/main.py --target api`) the path may
arrive with or without the `/api` prefix; `crm dev` mounts it under `/api`.
"""

import flask
import functions_framework

from crm import config
from crm.db import get_database
from crm.http import endpoint, prepare_deployment
from crm.wms.api import handle

prepare_deployment()  # problem+json for the framework's own errors; crm.server, not gunicorn
config.database_url()  # fail at startup, naming the variable, rather than on the first request


@functions_framework.http
@endpoint
def api(request: flask.Request) -> flask.Response:
    return handle(get_database(), request)
