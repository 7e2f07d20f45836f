"""`POST /webhooks/{source}/{org}` and `GET /webhooks/meta/{org}` (SPEC 10): signed events in.

Deploy: `functions-framework --source functions/webhooks/main.py --target webhooks`. Needs
`DATABASE_URL` and `CRM_SECRETS_KEY` (opens the integrations' sealed secrets); `CRM_PUBLIC_URL`
when behind a proxy (Twilio signs the URL it called). Verification, storage and processing live
in `crm.inbox`; `process-inbox` finishes what needs more work.
"""

import flask
import functions_framework

from crm import config
from crm.db import get_database
from crm.errors import Forbidden
from crm.http import endpoint, json_response, prepare_deployment, require_method
from crm.inbox import receive as inbox
from crm.sealing import SecretBox

prepare_deployment()  # problem+json for the framework's own errors; crm.server, not gunicorn
config.database_url()  # fail at startup, naming the variable, rather than on every request
BOX = SecretBox.from_env()


@functions_framework.http
@endpoint
def webhooks(request: flask.Request) -> flask.Response:
    require_method(request, "POST", "GET")
    if request.method == "GET":
        challenge = inbox.handshake(get_database(), BOX, request)
        if challenge is None:
            raise Forbidden("The verify token does not match.", code="verify_token_mismatch")
        return flask.Response(challenge, status=200, mimetype="text/plain")
    return json_response(inbox.receive(get_database(), BOX, request))
