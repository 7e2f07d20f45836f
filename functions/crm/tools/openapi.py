"""The HTTP surface's OpenAPI 3.1 document (`openapi.yaml` at the repository root, SPEC 7), served
as JSON by `crm dev` at `/openapi.json`. The YAML is the source; tests keep it and the code equal."""

from __future__ import annotations

import functools
import json
from typing import Any

import flask
import yaml

from crm import ROOT

DOCUMENT = ROOT / "openapi.yaml"


@functools.cache
def document() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))


@functools.cache
def _as_json() -> str:
    return json.dumps(document(), ensure_ascii=False, separators=(",", ":"))


def response() -> flask.Response:
    return flask.Response(_as_json(), mimetype="application/json",
                          headers={"Cache-Control": "no-cache"})
