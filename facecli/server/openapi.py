"""The static OpenAPI 3.1 description of `facecli serve` (served at /openapi.json) and a plain /docs page."""

from __future__ import annotations

import html
from typing import Any

from facecli.ids import COLLECTION_NAME_RE, PERSON_ID_MAX, PERSON_ID_RE
from facecli.vision.embed import MATCH_THRESHOLD

_ERROR = {"type": "object", "required": ["code", "message"],
          "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}
_META = {"type": "object", "additionalProperties": {"type": "string"}}
_STORAGE = {"type": "string", "enum": ["NoStorage", "StoreThumbnails", "StoreFullImage"], "default": "NoStorage"}
_B64 = {"type": "string", "description": "base64 image (JPEG, PNG, WebP, ...); one face"}
_COLL = {"type": "string", "pattern": f"^{COLLECTION_NAME_RE.pattern}$",
         "description": "not '.' or '..', nor a Windows device name (CON, NUL, COM1, ...)"}
_PID = {"type": "string", "pattern": f"^{PERSON_ID_RE.pattern}$", "maxLength": PERSON_ID_MAX,
        "description": "ASCII letters, digits, space and _ . @ : + -; no leading '-', no leading or trailing "
                       "space; not '.' or '..' (else 412)"}

_ERRORS = {
    "400": "ERR_INVALID_COLLECTION_NAME: the collection name is not 1-64 of [A-Za-z0-9_.-], or is '.', '..' "
           "or a Windows device name",
    "401": "ERR_API_KEY_NOT_PRESENT: no x-api-key header",
    "403": "ERR_API_KEY_NOT_VALID: unknown key",
    "404": "ERR_NOT_FOUND: the collection does not exist",
    "409": "ERR_ALREADY_EXISTS",
    "412": "ERR_UNPROCESSABLE_CONTENT: malformed JSON, JSON nested deeper than 64 levels, wrong types or an "
           "invalid person_id (nothing is stored; single-image endpoints: "
           "ERR_INVALID_IMAGE, ERR_NO_FACE_DETECTED, ERR_MULTIPLE_FACES_DETECTED)",
    "413": "ERR_PAYLOAD_IS_TOO_LARGE: the body is over the server's limit",
    "500": "ERR_DATABASE_ERROR: please retry",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {c: {"description": _ERRORS[c], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for c in codes}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}


def openapi_schema(version: str, max_body_bytes: int) -> dict[str, Any]:
    person_result = {"type": "object", "properties": {
        "code": {"type": "string", "description": "OK, or ERR_NO_FACE_DETECTED / ERR_MULTIPLE_FACES_DETECTED / "
                                                  "ERR_INVALID_IMAGE / ERR_UNPROCESSABLE_CONTENT"},
        "message": {"type": "string", "description": "created / updated / unchanged, or why the person was refused"},
        "metadata": _META, "person_id": {"type": "string", "description": "facecli extension: whose result this is"}}}
    person_in = {"type": "object", "required": ["person_id", "face_base_64"], "properties": {
        "person_id": _PID, "person_name": {"type": "string"}, "face_base_64": _B64, "metadata": _META}}
    match = {"type": "object", "properties": {
        "person_id": {"type": "string"}, "person_name": {"type": "string"}, "metadata": _META,
        "score": {"type": "number", "description": "cosine similarity of the embeddings (same person >= about "
                                                    f"{MATCH_THRESHOLD})"}}}
    person_row = {"type": "object", "properties": {
        "person_id": {"type": "string"}, "person_name": {"type": "string"}, "metadata": _META,
        "faces": {"type": "integer"}, "created": {"type": "string"}, "modified": {"type": "string"}}}
    collection_row = {"type": "object", "properties": {
        "name": {"type": "string"}, "num_persons": {"type": "integer"}, "num_faces": {"type": "integer"},
        "created": {"type": "string"}, "modified": {"type": "string"}}}
    auth = [{"apiKey": []}]
    paths: dict[str, Any] = {
        "/collection": {
            "post": {"summary": "Create a collection", "security": auth,
                     "requestBody": _json_body({"type": "object", "required": ["name"], "properties": {"name": _COLL}}),
                     "responses": _ok("created", {"type": "object", "properties": {
                         "name": {"type": "string"}, "num_persons": {"type": "integer"}}})
                     | _errors("400", "401", "403", "409", "412", "413", "500")},
            "delete": {"summary": "Delete a collection and every person in it", "security": auth,
                       "requestBody": _json_body({"type": "object", "required": ["name"], "properties": {"name": _COLL}}),
                       "responses": _ok("deleted", {"type": "object"})
                       | _errors("400", "401", "403", "404", "412", "413", "500")},
        },
        "/person": {"put": {
            "summary": "Enroll or update one person (same person_id: name, metadata and face replaced)", "security": auth,
            "requestBody": _json_body({"type": "object", "required": ["collection_name", "person_id", "face_base_64"],
                                       "properties": {**person_in["properties"], "collection_name": _COLL,
                                                      "face_storage_type": _STORAGE,
                                                      "check_duplicates": {"type": "boolean", "default": False},
                                                      "duplicate_check_min_similarity": {"type": "number", "default": 0.7},
                                                      "check_liveness": {"type": "boolean", "default": False,
                                                                         "description": "true is refused (412)"}}}),
            "responses": _ok("enrolled", person_result) | _errors("400", "401", "403", "404", "409", "412", "413", "500")}},
        "/persons": {
            "put": {"summary": "Enroll or update persons in bulk (one collection; one face per image)", "security": auth,
                    "requestBody": _json_body({"type": "object", "required": ["collection_name", "persons"], "properties": {
                        "collection_name": _COLL, "face_storage_type": _STORAGE,
                        "persons": {"type": "array", "items": person_in}}}),
                    "responses": _ok("one result per person, in request order", {"type": "array", "items": person_result})
                    | _errors("400", "401", "403", "404", "412", "413", "500")},
            "get": {"summary": "List persons (facecli extension)", "security": auth,
                    "parameters": [{"name": "collection_name", "in": "query", "required": True, "schema": _COLL},
                                   {"name": "skip", "in": "query", "schema": {"type": "integer", "default": 0}},
                                   {"name": "take", "in": "query", "schema": {"type": "integer", "default": 20,
                                                                              "maximum": 1000}},
                                   {"name": "person_id", "in": "query", "schema": _PID}],
                    "responses": _ok("a page, ordered by person_id", {"type": "object", "properties": {
                        "count": {"type": "integer"}, "persons": {"type": "array", "items": person_row}}})
                    | _errors("400", "401", "403", "404", "412", "500")},
        },
        "/collections": {"get": {
            "summary": "List collections (facecli extension)", "security": auth,
            "parameters": [{"name": "skip", "in": "query", "schema": {"type": "integer", "default": 0}},
                           {"name": "take", "in": "query", "schema": {"type": "integer", "default": 20, "maximum": 1000}},
                           {"name": "name", "in": "query", "schema": _COLL,
                            "description": "only this collection (empty list when absent)"}],
            "responses": _ok("a page, ordered by name", {"type": "object", "properties": {
                "count": {"type": "integer"}, "collections": {"type": "array", "items": collection_row}}})
            | _errors("400", "401", "403", "412", "500")}},
        "/face-search": {"post": {
            "summary": "1:N search of the main face of an image", "security": auth,
            "requestBody": _json_body({"type": "object", "required": ["collection_name", "face_base_64"], "properties": {
                "collection_name": _COLL, "face_base_64": _B64,
                "min_similarity_score": {"type": "number", "default": 0.7,
                                         "description": "on this server's cosine scale: send your own threshold "
                                                        f"({MATCH_THRESHOLD} is the calibrated match threshold)"},
                "max_results": {"type": "integer", "default": 1},
                "check_liveness": {"type": "boolean", "default": False, "description": "true is refused (412)"}}}),
            "responses": _ok("matches, best first", {"type": "array", "items": match})
            | _errors("400", "401", "403", "404", "412", "413", "500")}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "facecli serve", "version": version,
                 "description": "The OpenCV Face Recognition Server API over facecli's embedded engine. "
                                f"Request bodies are limited to {max_body_bytes} bytes (413 above)."},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR},
                       "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
    }


def docs_html(schema: dict[str, Any]) -> str:
    """A dependency-free page listing the endpoints (no CDN: the server may run offline)."""
    e = html.escape
    rows = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            fields = ", ".join(f"<code>{e(k)}</code>" for k in body.get("properties", {}))
            params = ", ".join(f"<code>{e(p['name'])}</code>" for p in op.get("parameters", []))
            codes = ", ".join(sorted(op.get("responses", {})))
            rows.append(f"<tr><td><b>{e(method.upper())}</b></td><td><code>{e(path)}</code></td><td>{e(op['summary'])}"
                        f"</td><td>{fields or params}</td><td>{e(codes)}</td></tr>")
    info = schema["info"]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(info['title'])}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border-bottom:1px solid #ddd;padding:.4em;"
            "text-align:left;vertical-align:top}</style></head><body>"
            f"<h1>{e(info['title'])} {e(info['version'])}</h1><p>{e(info['description'])}</p>"
            "<p>Authentication: header <code>x-api-key</code>. Errors: <code>{code, message}</code>. "
            "Machine-readable schema: <a href='openapi.json'>/openapi.json</a>.</p>"
            "<table><tr><th>method</th><th>path</th><th>what</th><th>body / query</th><th>statuses</th></tr>"
            + "".join(rows) + "</table></body></html>")
