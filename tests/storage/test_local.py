"""The ``local`` provider end to end over HTTP: ask for an upload, PUT it to the signed URL,
confirm, download through the signed URL; and every way a link or an upload is refused,
with nothing left half-written."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Response

from kalpla_core.config import ConfigError, load_settings
from kalpla_core.storage.local import LocalStorage
from kalpla_core.testing import Factories
from tests.courses.structure_support import World, create_course, enroll, ok, problem, world

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40


@pytest.fixture
def app(make_app: Any, tmp_path: Path) -> Any:
    # An instance folder of its own, so the test sees every file the provider writes.
    return make_app(plugins=[], instance_path=str(tmp_path / "instance"))


def _root(app: Any) -> Path:
    return Path(app.extensions["kalpla"].settings.instance_path) / "files"


def _stored(app: Any) -> list[str]:
    """Every file under the storage root, relative to it (temporary files included)."""
    root = _root(app)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) \
        if root.exists() else []


def _local(app: Any) -> LocalStorage:
    provider = app.extensions["kalpla"].providers.get("storage", "local", app)
    assert isinstance(provider, LocalStorage)
    return provider


def _ask(client: Any, w: World, course_id: str, data: bytes = PDF, **fields: Any) -> Any:
    body = {"course_id": course_id, "purpose": "resource", "filename": "notes.pdf",
            "content_type": "application/pdf", "size": len(data), **fields}
    return client.post("/api/v1/files", json=body, headers=w.auth(w.instructor))


def _put(client: Any, upload: dict[str, Any], data: bytes, **headers: str) -> Any:
    return client.put(upload["url"], data=data, headers={**upload["headers"], **headers})


def _confirm(client: Any, w: World, file_id: str) -> Any:
    return client.post(f"/api/v1/files/{file_id}/confirm", headers=w.auth(w.instructor))


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"


def _ready_file(client: Any, w: World, course_id: str, data: bytes = PDF) -> dict[str, Any]:
    asked = ok(_ask(client, w, course_id, data), 201)
    assert _put(client, asked["upload"], data).status_code == 204
    return ok(_confirm(client, w, asked["id"]))


def test_ask_upload_confirm_download_delete(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    enroll(app, w.enrolled, course_id)

    r = _ask(client, w, course_id, filename="../../etc/Lecture notes.pdf")
    asked = ok(r, 201)
    assert r.headers["Location"].endswith(f"/api/v1/files/{asked['id']}")
    assert r.headers["Cache-Control"] == "private, no-store"
    assert asked["status"] == "pending" and asked["provider"] == "local"
    assert asked["filename"] == "Lecture notes.pdf"  # the path is dropped
    assert asked["owner_id"] == w.instructor.id and asked["institution_id"] == w.school.id
    upload = asked["upload"]
    assert upload["method"] == "PUT" and upload["expires_in"] == 900
    assert upload["headers"] == {"Content-Type": "application/pdf"}
    assert upload["url"].startswith("http://localhost:5000/api/v1/files/local/")

    assert _put(client, upload, PDF).status_code == 204
    # The key is made by the server: institution / file id, nothing of the name.
    uploaded = f"uploads/{w.school.id}/{asked['id']}"
    assert _stored(app) == [uploaded, f"{uploaded}.json"]
    assert (_root(app) / uploaded).read_bytes() == PDF

    ready = ok(_confirm(client, w, asked["id"]))
    assert ready["status"] == "ready" and ready["confirmed_at"]
    assert ready["sha256"] == hashlib.sha256(PDF).hexdigest()
    # Kept at its final key, which no upload link names; the upload key is emptied.
    assert _stored(app) == [f"{w.school.id}/ready/{asked['id']}",
                            f"{w.school.id}/ready/{asked['id']}.json"]
    assert ok(_confirm(client, w, asked["id"])) == ready  # confirming again changes nothing

    # An enrolled student downloads it through a short-lived signed URL.
    link = ok(client.get(f"/api/v1/files/{asked['id']}/download", headers=w.auth(w.enrolled)))
    assert link["expires_in"] == 300 and link["size"] == len(PDF)
    assert link["filename"] == "Lecture notes.pdf" and link["content_type"] == "application/pdf"
    query = parse_qs(urlsplit(link["url"]).query)
    assert set(query) == {"expires", "signature"}
    assert time.time() < int(query["expires"][0]) <= time.time() + 300
    got = client.get(link["url"])  # no credentials: the signature is the permission
    assert got.status_code == 200 and got.data == PDF
    assert got.mimetype == "application/pdf"
    assert got.headers["Content-Disposition"].startswith('attachment; filename="Lecture notes.pdf"')
    assert got.headers["Cache-Control"] == "private, no-store"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    part = client.get(link["url"], headers={"Range": "bytes=0-7"})
    assert part.status_code == 206 and part.data == PDF[:8]

    # The upload link cannot replace the confirmed file, nor leave anything behind.
    body = problem(_put(client, upload, PDF[::-1]), 409)
    assert body["type"] == "urn:kalpla:problem:upload-closed"
    assert (_root(app) / w.school.id / "ready" / asked["id"]).read_bytes() == PDF
    assert len(_stored(app)) == 2
    assert client.get(link["url"]).data == PDF

    assert client.delete(f"/api/v1/files/{asked['id']}",
                         headers=w.auth(w.instructor)).status_code == 204
    assert _stored(app) == []
    problem(client.get(link["url"]), 404)
    problem(client.get(f"/api/v1/files/{asked['id']}", headers=w.auth(w.instructor)), 404)


def test_altered_or_expired_links_are_refused(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    ready = _ready_file(client, w, course_id)
    url = ok(client.get(f"/api/v1/files/{ready['id']}/download",
                        headers=w.auth(w.instructor)))["url"]
    signature = parse_qs(urlsplit(url).query)["signature"][0]
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    other = _ready_file(client, w, course_id, PDF[:100])
    other_url = ok(client.get(f"/api/v1/files/{other['id']}/download",
                              headers=w.auth(w.instructor)))["url"]
    altered = {
        "signature": _with_query(url, signature=flipped),
        "no signature": _with_query(url, signature=None),
        "later expiry": _with_query(url, expires=str(int(time.time()) + 86400)),
        "extra parameter": _with_query(url, download="1"),
        "another key": url.replace(ready["id"], other["id"]),
        "path traversal": url.replace(f"{w.school.id}/ready/{ready['id']}",
                                      f"{w.school.id}/../secret_key"),
    }
    for name, bad in altered.items():
        r = client.get(bad)
        body = problem(r, 403)
        assert body["type"] == "urn:kalpla:problem:bad-signature", name
        assert PDF[:8] not in r.data
    assert client.get(url).status_code == 200 and client.get(other_url).status_code == 200

    # A GET link is no upload link.
    assert problem(client.put(url, data=b"x", headers={"Content-Type": "application/pdf"}),
                   403)["type"] == "urn:kalpla:problem:bad-signature"

    # Correctly signed but past its expiry.
    local = _local(app)
    key = f"{w.school.id}/ready/{ready['id']}"
    expired = local.signed_url("GET", key, int(time.time()) - 1)
    assert problem(client.get(expired), 403)["type"] == "urn:kalpla:problem:link-expired"

    # An expired upload link writes nothing.
    asked = ok(_ask(client, w, course_id), 201)
    query = {k: v[0] for k, v in parse_qs(urlsplit(asked["upload"]["url"]).query).items()}
    params = {k: query[k] for k in ("content_type", "filename", "max_size")}
    stale = local.signed_url("PUT", f"uploads/{w.school.id}/{asked['id']}", int(time.time()) - 1,
                             params)
    before = _stored(app)
    assert problem(_put(client, asked["upload"] | {"url": stale}, PDF),
                   403)["type"] == "urn:kalpla:problem:link-expired"
    # … and neither does an upload link whose declared size was raised.
    bigger = _with_query(asked["upload"]["url"], max_size=str(10 * len(PDF)))
    assert problem(_put(client, asked["upload"] | {"url": bigger}, PDF * 2), 403)
    assert _stored(app) == before


def test_oversized_uploads_are_cut_off_while_streaming(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    asked = ok(_ask(client, w, course_id, PDF[:1000]), 201)

    # A Content-Length above the declared size is refused before reading.
    body = problem(_put(client, asked["upload"], PDF[:1001]), 413)
    assert body["type"] == "urn:kalpla:problem:upload-too-large"
    assert "1000 bytes" in body["detail"]
    assert _stored(app) == []

    # Without a length (chunked), reading stops at the limit: a 5 MB body is never read whole.
    class Endless(io.RawIOBase):
        sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if self.sent >= 5_000_000:
                return 0
            n = len(buffer)
            buffer[:n] = b"x" * n
            self.sent += n
            return n

    stream = Endless()
    environ = EnvironBuilder(asked["upload"]["url"], method="PUT",
                             headers={"Content-Type": "application/pdf"}).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": io.BufferedReader(stream), "wsgi.input_terminated": True})
    r = Response(*run_wsgi_app(app, environ, buffered=True))
    assert problem(r, 413)["type"] == "urn:kalpla:problem:upload-too-large"
    assert stream.sent < 1_000_000
    assert _stored(app) == []  # no partial object, no temporary file

    # An empty body is refused too, and leaves nothing.
    assert problem(_put(client, asked["upload"], b""), 400)["type"] == \
        "urn:kalpla:problem:empty-upload"
    assert _stored(app) == []
    # The link still works for the right body.
    assert _put(client, asked["upload"], PDF[:1000]).status_code == 204
    assert ok(_confirm(client, w, asked["id"]))["status"] == "ready"


def test_sizes_above_the_limit_are_refused_when_asked(make_app, tmp_path):
    # Request bodies are limited to 1 KiB elsewhere; uploads have their own limit.
    app = make_app(plugins=[], instance_path=str(tmp_path / "instance"), max_upload_bytes=4096,
                   max_content_length=1024)
    client = app.test_client()
    w = world(Factories(app))
    course_id = create_course(client, w)
    body = problem(_ask(client, w, course_id, size=4097), 422)
    assert body["errors"]["size"] == ["Files are limited to 4096 bytes."]
    for size in (0, -1, "12", 1.5):
        assert "size" in problem(_ask(client, w, course_id, size=size), 422)["errors"]
    asked = ok(_ask(client, w, course_id, PDF[:4096]), 201)
    assert _put(client, asked["upload"], PDF[:4096]).status_code == 204
    assert ok(_confirm(client, w, asked["id"]))["size"] == 4096


def test_wrong_types_are_refused(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    refused = {
        "text/html": "not accepted", "image/svg+xml": "not accepted",
        "nonsense": "media type",
    }
    for content_type, words in refused.items():
        body = problem(_ask(client, w, course_id, content_type=content_type), 422)
        assert words in body["errors"]["content_type"][0], content_type
    body = problem(_ask(client, w, course_id, purpose="cover"), 422)
    assert body["errors"]["content_type"] == ["A cover is an image."]
    body = problem(_ask(client, w, course_id, purpose="video", content_type="image/png"), 422)
    assert body["errors"]["content_type"] == ["A video file has a video/… type."]
    assert "purpose" in problem(_ask(client, w, course_id, purpose="avatar"), 422)["errors"]
    # Parameters and case do not matter; the bare type is what is kept.
    asked = ok(_ask(client, w, course_id, content_type="Application/PDF; charset=binary"), 201)
    assert asked["content_type"] == "application/pdf"

    # Uploading with another Content-Type than declared is refused and writes nothing.
    body = problem(_put(client, asked["upload"], PDF, **{"Content-Type": "text/plain"}), 415)
    assert body["type"] == "urn:kalpla:problem:content-type-mismatch"
    assert _stored(app) == []

    # An object stored under another type (its record says so) is refused on confirm.
    assert _put(client, asked["upload"], PDF).status_code == 204
    meta = _root(app) / "uploads" / w.school.id / f"{asked['id']}.json"
    meta.write_text(json.dumps({"content_type": "text/plain", "filename": "notes.pdf"}))
    body = problem(_confirm(client, w, asked["id"]), 422)
    assert body["type"] == "urn:kalpla:problem:upload-rejected"
    assert body["errors"]["content_type"] == [
        "The object was stored as text/plain; application/pdf was declared."]
    assert _stored(app) == []


def test_a_type_no_longer_allowed_is_refused_on_confirm(make_app, tmp_path):
    instance = str(tmp_path / "instance")
    app = make_app(plugins=[], instance_path=instance)
    client = app.test_client()
    w = world(Factories(app))
    asked = ok(_ask(client, w, create_course(client, w), b"plain words",
                    content_type="text/plain", filename="a.txt"), 201)
    assert _put(client, asked["upload"], b"plain words").status_code == 204
    # The deployment narrows its types (image/* accepts a whole family) before the confirm.
    narrowed = make_app(plugins=[], instance_path=instance, upload_types="image/*,application/pdf")
    body = problem(narrowed.test_client().post(
        f"/api/v1/files/{asked['id']}/confirm",
        headers=Factories(narrowed).auth(w.instructor, w.school)), 422)
    assert body["errors"] == {"content_type": ["text/plain files are not accepted here."]}
    assert _stored(app) == []
    assert ok(_ask(narrowed.test_client(), World(**{**w.__dict__,
                                                    "factories": Factories(narrowed)}),
                   asked["course_id"], b"\x89PNG", content_type="image/webp",
                   filename="c.webp"), 201)["content_type"] == "image/webp"


def test_a_size_mismatch_is_refused_on_confirm_and_can_be_uploaded_again(app, client,
                                                                          factories):
    w = world(factories)
    course_id = create_course(client, w)
    asked = ok(_ask(client, w, course_id), 201)
    body = problem(_confirm(client, w, asked["id"]), 422)
    assert body["type"] == "urn:kalpla:problem:upload-missing"

    assert _put(client, asked["upload"], PDF[:-10]).status_code == 204
    body = problem(_confirm(client, w, asked["id"]), 422)
    assert body["errors"] == {"size": [f"{len(PDF) - 10} bytes were stored; {len(PDF)} "
                                       "were declared."]}
    assert _stored(app) == []  # the object is gone …
    again = ok(client.get(f"/api/v1/files/{asked['id']}", headers=w.auth(w.instructor)))
    assert again["status"] == "pending"  # … and the file waits for a right one
    assert _put(client, asked["upload"], PDF).status_code == 204
    assert ok(_confirm(client, w, asked["id"]))["sha256"] == hashlib.sha256(PDF).hexdigest()


def test_upload_settings_are_validated():
    base = {"KALPLA_SECRET_KEY": "k" * 40, "KALPLA_INSTANCE_PATH": "/tmp/kalpla-unused"}
    settings = load_settings(environ=base)
    assert settings.max_upload_bytes == 100 * 1024 * 1024
    assert "application/pdf" in settings.upload_types and "text/html" not in settings.upload_types
    settings = load_settings(environ={**base, "KALPLA_UPLOAD_TYPES": " Image/* , text/plain,"})
    assert settings.upload_types == ("image/*", "text/plain")
    for name, value in {"KALPLA_MAX_UPLOAD_BYTES": "0", "KALPLA_UPLOAD_TYPES": "*/*"}.items():
        with pytest.raises(ConfigError, match=name):
            load_settings(environ={**base, name: value})
    with pytest.raises(ConfigError, match="KALPLA_UPLOAD_TYPES"):
        load_settings(environ={**base, "KALPLA_UPLOAD_TYPES": "pdf"})
