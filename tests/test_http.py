"""HTTP conventions: problem+json everywhere, pagination, ETags, request ids, logs, headers."""

from __future__ import annotations

import json
import logging

import pytest
from openapi_spec_validator import validate
from sqlalchemy import func, select

from kalpla_core.contract import PluginMeta
from kalpla_core.hookspecs import hookimpl
from kalpla_core.http.api import Blueprint
from kalpla_core.http.observability import JSONFormatter
from kalpla_core.institutions.models import Institution

PROBLEM = "application/problem+json"


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status
    assert {"type", "title", "status"} <= set(body)
    return body


# A plugin whose routes fail in the ways the core must render.
class Crashing:
    KALPLA_PLUGIN = PluginMeta(name="crash", version="1.0", core_requires=">=0.1")
    blp = Blueprint("crash", __name__)

    @staticmethod
    @blp.post("/write-then-fail")
    def write_then_fail():
        from kalpla_core.toolkit import db_session

        db_session().add(Institution(slug="half-written", name="Half"))
        db_session().flush()
        raise RuntimeError("secret internal detail /etc/passwd")

    @staticmethod
    @hookimpl
    def kalpla_blueprints():
        return [Crashing.blp]


@pytest.fixture
def crash_app(make_app, factories):
    app = make_app(plugins=["crash"], plugin_objects={"crash": Crashing})
    from kalpla_core.testing import Factories

    Factories(app).enable(Factories(app).default_institution(), "crash")
    return app


def test_unknown_path_and_wrong_method(client):
    body = assert_problem(client.get("/no/such/path"), 404)
    assert body["detail"] == "Nothing is found at /no/such/path."
    r = client.delete("/api/v1/plugins")
    assert_problem(r, 405)
    assert "GET" in r.headers["Allow"]


def test_validation_errors_list_fields_and_write_nothing(client, factories, db):
    admin = factories.user(platform_admin=True)
    before = db.scalar(select(func.count()).select_from(Institution))
    r = client.post("/api/v1/institutions", json={"slug": "Not A Slug", "extra": 1},
                    headers=factories.auth(admin))
    body = assert_problem(r, 422)
    assert body["type"] == "urn:kalpla:problem:validation"
    assert set(body["errors"]) == {"slug", "name", "extra"}
    assert db.scalar(select(func.count()).select_from(Institution)) == before


def test_malformed_json_is_a_problem(client, factories):
    admin = factories.user(platform_admin=True)
    r = client.post("/api/v1/institutions", data="{not json",
                    headers={**factories.auth(admin), "Content-Type": "application/json"})
    assert r.status_code in (400, 422)
    assert r.content_type == PROBLEM


def test_oversized_body_is_413(make_app, factories):
    app = make_app(max_content_length=1024)
    client = app.test_client()
    admin = factories.user(platform_admin=True)
    r = client.post("/api/v1/institutions", json={"slug": "big", "name": "x" * 4000},
                    headers=factories.auth(admin))
    assert_problem(r, 413)
    assert client.get("/api/v1/institutions/big").status_code == 404


def test_internal_error_leaks_nothing_and_rolls_back(crash_app, db, caplog):
    client = crash_app.test_client()
    with caplog.at_level(logging.ERROR):
        r = client.post("/api/v1/crash/write-then-fail")
    body = assert_problem(r, 500)
    text = r.get_data(as_text=True)
    assert "Traceback" not in text and "/etc/passwd" not in text
    assert body["request_id"] == r.headers["X-Request-ID"]
    assert db.scalar(select(Institution).where(Institution.slug == "half-written")) is None
    # The error is logged, with the traceback, for operators.
    assert any("unhandled error" in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_unauthenticated_and_bad_tokens_are_401(client):
    assert_problem(client.get("/api/v1/me"), 401)
    r = client.get("/api/v1/me", headers={"Authorization": "Bearer not.a.token"})
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(client.get("/api/v1/me", headers={"Authorization": "Basic eDp5"}), 401)


def test_request_id_is_echoed_or_generated(client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    r = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["X-Request-ID"] != "bad id with spaces"
    assert len(r.headers["X-Request-ID"]) == 32


def test_json_log_lines_carry_the_request_id(crash_app, caplog):
    with caplog.at_level(logging.ERROR):
        crash_app.test_client().post("/api/v1/crash/write-then-fail",
                                     headers={"X-Request-ID": "trace-me-42"})
    formatter = JSONFormatter()
    entries = [json.loads(formatter.format(rec)) for rec in caplog.records]
    failed = [e for e in entries if e["message"] == "unhandled error"]
    assert failed and failed[0]["request_id"] == "trace-me-42"
    assert failed[0]["level"] == "ERROR" and "exc_info" in failed[0]


def test_security_headers_on_every_response(client):
    for path in ("/healthz", "/no/such/path", "/api/v1/institutions"):
        h = client.get(path).headers
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["X-Frame-Options"] == "DENY"
        assert h["Content-Security-Policy"].startswith("default-src 'none'")
        assert h["Referrer-Policy"] == "no-referrer"


def test_cors_only_for_configured_origins(make_app):
    client = make_app(cors_origins="https://app.example.org").test_client()
    r = client.options("/api/v1/institutions", headers={
        "Origin": "https://app.example.org", "Access-Control-Request-Method": "GET"})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "If-Match" in r.headers["Access-Control-Allow-Headers"]
    r = client.get("/api/v1/institutions", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json["checks"]["database"] == "ok"
    client.get("/no/such/path")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'kalpla_http_requests_total{endpoint="/healthz",method="GET",status="200"}' in text
    assert 'status="404"' in text


def test_readyz_reports_a_dead_redis(make_app):
    client = make_app(redis_url="redis://127.0.0.1:1/0").test_client()
    body = assert_problem(client.get("/readyz"), 503)
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error")


def test_openapi_is_valid_31_and_documents_problems(client):
    spec = client.get("/api/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    validate(spec)
    assert "/api/v1/institutions/{slug}" in spec["paths"]
    assert "Problem" in spec["components"]["schemas"]
    responses = json.dumps(spec["components"]["responses"])
    assert "application/problem+json" in responses


def test_route_docstrings_are_shown_as_markdown(client):
    spec = client.get("/api/openapi.json").json
    texts = [op.get(part, "") for path in spec["paths"].values() for op in path.values()
             if isinstance(op, dict) for part in ("summary", "description")]
    assert any("`" in text for text in texts)  # literals are still marked as code
    assert not [text for text in texts if "``" in text]


def test_docs_ui_is_served_by_the_app(client):
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html  # no CDN
    for asset in ("/api/docs/assets/swagger-ui-bundle.js", "/api/docs/assets/swagger-ui.css",
                  "/api/docs/assets/swagger-ui-standalone-preset.js", "/api/docs/init.js"):
        assert asset in html
        r = client.get(asset)
        assert r.status_code == 200 and len(r.data) > 50
    assert client.get("/api/docs/assets/../../app.py").status_code == 404
    assert "SwaggerUIBundle" in client.get("/api/docs/init.js").get_data(as_text=True)


def test_cursor_pagination_pages_through_everything(client, factories):
    for i in range(23):
        factories.institution(f"school-{i:02d}")
    seen, url, pages = [], "/api/v1/institutions?limit=5", 0
    while url:
        r = client.get(url)
        assert r.status_code == 200
        seen += [i["slug"] for i in r.json["items"]]
        pages += 1
        link = r.headers.get("Link")
        if r.json["next_cursor"]:
            assert link and link.endswith('rel="next"')
            url = link[1:link.index(">")].replace("http://localhost", "")
        else:
            assert link is None
            url = None
    assert pages == 5
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 24  # 23 + default


def test_cursor_pagination_stable_while_rows_are_added(client, factories):
    for i in range(10):
        factories.institution(f"b-{i}")
    r = client.get("/api/v1/institutions?limit=4")
    first = [i["slug"] for i in r.json["items"]]
    factories.institution("a-added-before")  # sorts before the cursor: must not appear
    factories.institution("z-added-after")  # after the cursor: must appear
    rest, cursor = [], r.json["next_cursor"]
    while cursor:
        r = client.get("/api/v1/institutions", query_string={"limit": 4, "cursor": cursor})
        rest += [i["slug"] for i in r.json["items"]]
        cursor = r.json["next_cursor"]
    assert not set(first) & set(rest)
    assert "z-added-after" in rest and "a-added-before" not in rest


def test_tampered_or_foreign_cursor_is_400(client, factories):
    for i in range(3):
        factories.institution(f"c-{i}")
    cursor = client.get("/api/v1/institutions?limit=1").json["next_cursor"]
    body, sig = cursor.split(".")
    for bad in (body + "x." + sig, cursor[:-2] + "AA", "garbage"):
        r = client.get("/api/v1/institutions", query_string={"cursor": bad})
        assert_problem(r, 400)
    assert_problem(client.get("/api/v1/institutions?limit=1000"), 422)


def test_etag_and_if_match(client, factories):
    inst = factories.institution("etag-school")
    admin = factories.user(roles={inst: ["admin"]})
    auth = factories.auth(admin)
    r = client.get("/api/v1/institutions/etag-school", headers=auth)
    etag = r.headers["ETag"]
    assert client.get("/api/v1/institutions/etag-school",
                      headers={**auth, "If-None-Match": etag}).status_code == 304
    r = client.patch("/api/v1/institutions/etag-school", json={"name": "New"}, headers=auth)
    assert assert_problem(r, 428)["type"] == "urn:kalpla:problem:precondition-required"
    r = client.patch("/api/v1/institutions/etag-school", json={"name": "New"},
                     headers={**auth, "If-Match": etag})
    assert r.status_code == 200 and r.json["name"] == "New"
    new_etag = r.headers["ETag"]
    assert new_etag != etag
    r = client.patch("/api/v1/institutions/etag-school", json={"name": "Stale"},
                     headers={**auth, "If-Match": etag})
    assert_problem(r, 412)
    assert client.get("/api/v1/institutions/etag-school").json["name"] == "New"
