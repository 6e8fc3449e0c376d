"""The OpenAPI 3.1 document, generated from the live route table (so it cannot drift from what
is enforced). ``python -m agent.api.openapi`` writes the repository copy docs/openapi.json;
a test checks the two are equal."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from agent.capability import Access, Route

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                            "field": {"type": "string"}}}},
}


def _responses(route: Route) -> dict[str, Any]:
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    ok_status = "201" if route.method == "POST" and route.path.endswith(("/users", "/claim")) else "200"
    out: dict[str, Any] = {ok_status: {"description": "success"}}
    out["400"] = {"description": "invalid request (the error names the field)", **err}
    out["401"] = {"description": "authentication required", **err}
    out["403"] = {"description": "role too low, CSRF token missing, or device unclaimed", **err}
    out["404"] = {"description": "not found", **err}
    out["409"] = {"description": "conflict", **err}
    out["413"] = {"description": "body too large", **err}
    out["415"] = {"description": "body must be JSON", **err}
    out["429"] = {"description": "throttled after failed attempts (Retry-After)", **err}
    return out


def build_openapi(routes: Sequence[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in sorted(routes, key=lambda r: (r.path, r.method)):
        op: dict[str, Any] = {
            "summary": r.summary or r.path,
            "operationId": f"{r.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', r.path.lower()).strip('_')}",
            "responses": _responses(r),
            "x-min-role": r.min_role.value if r.min_role else None,
            "x-before-claim": r.before_claim,
        }
        if r.access is Access.PUBLIC:
            op["security"] = []
        params = re.findall(r"{(\w+)}", r.path)
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                for p in params]
        if r.body_schema is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": dict(r.body_schema)}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Camera management API", "version": "1"},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "__Host-cam_session"},
            },
            "schemas": {"Error": _ERROR},
        },
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": paths,
    }


def main() -> None:
    from agent.offline import offline_routes

    json.dump(build_openapi(offline_routes()), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
