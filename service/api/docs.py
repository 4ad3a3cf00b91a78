"""`GET /openapi.json` and `GET /docs`: the API describing itself, offline.

The page is Swagger UI 5 (it reads OpenAPI 3.1). Its files are served from
the flask-swagger-ui package's copy of the Swagger UI distribution, never a
CDN, so the page works on a machine with no network; the package's own
blueprint is not used, because its page starts Swagger UI from an inline
script, which the page's Content-Security-Policy forbids: here the start-up
script is a file of its own (`swagger-initializer.js`, written below).
"""

from __future__ import annotations

import json
import mimetypes
from importlib.resources import files
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, send_from_directory, url_for

from service.api.openapi import document
from service.api.spec import Endpoint, Success, documented

blueprint = Blueprint("docs", __name__)

TAG = "operations"
# Swagger UI's distribution inside the flask-swagger-ui package.
ASSETS_PACKAGE = "flask_swagger_ui"
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")
# What send_from_directory answers them as (it guesses by name, as this does).
ASSET_MEDIA_TYPES = tuple(
    dict.fromkeys(mimetypes.guess_type(asset)[0] or "application/octet-stream" for asset in ASSETS)
)
# Everything the page loads comes from this origin; Swagger UI's icons are data: URIs.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>bankrace API</title>
  <link rel="stylesheet" href="{stylesheet}">
  <link rel="icon" type="image/png" href="{icon}" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{bundle}"></script>
  <script src="{initializer}"></script>
</body>
</html>
"""
INITIALIZER = """window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({{
    url: {document_url},
    dom_id: "#swagger-ui",
    deepLinking: true,
    displayRequestDuration: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  }});
}});
"""


def assets_directory() -> Path:
    return Path(str(files(ASSETS_PACKAGE) / "dist"))


@blueprint.get("/openapi.json")
@documented(
    Endpoint(
        "This document (OpenAPI 3.1)",
        TAG,
        Success(200, "the OpenAPI document", media_type="application/json"),
    )
)
def openapi_document() -> Response:
    return jsonify(document(current_app))


@blueprint.get("/docs")
@documented(
    Endpoint(
        "A readable page of this API (Swagger UI), with 'Try it out'",
        TAG,
        Success(200, "the page", media_type="text/html"),
    )
)
def docs_page() -> Response:
    page = PAGE.format(
        stylesheet=url_for("docs.docs_asset", asset="swagger-ui.css"),
        icon=url_for("docs.docs_asset", asset="favicon-32x32.png"),
        bundle=url_for("docs.docs_asset", asset="swagger-ui-bundle.js"),
        initializer=url_for("docs.docs_initializer"),
    )
    return _with_policy(Response(page, mimetype="text/html"))


@blueprint.get("/docs/swagger-initializer.js")
@documented(
    Endpoint(
        "The script that starts Swagger UI on the docs page",
        TAG,
        Success(200, "JavaScript", media_type="text/javascript"),
    )
)
def docs_initializer() -> Response:
    script = INITIALIZER.format(document_url=json.dumps(url_for("docs.openapi_document")))
    return Response(script, mimetype="text/javascript")


@blueprint.get(f"/docs/<any({', '.join(map(json.dumps, ASSETS))}):asset>")
@documented(
    Endpoint(
        "Swagger UI's files for the docs page (from the flask-swagger-ui package)",
        TAG,
        Success(
            200,
            "the file",
            media_type=ASSET_MEDIA_TYPES[0],
            other_media_types=ASSET_MEDIA_TYPES[1:],
        ),
        problems=("not_found",),
    )
)
def docs_asset(asset: str) -> Response:
    return send_from_directory(assets_directory(), asset)


def _with_policy(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
