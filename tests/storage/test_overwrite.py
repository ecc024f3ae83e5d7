"""Upload instructions outlive the confirm (15 minutes): replaying them afterwards must not
change what downloads serve, and an object replaced between the check and the copy to its
final key is not kept. On the ``local`` provider and on S3 (moto)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
import requests
from moto.s3.exceptions import PreconditionFailed
from moto.s3.responses import S3Response
from sqlalchemy import delete, update

from kalpla_core.storage.local import LocalStorage
from kalpla_core.storage.models import StoredFile
from kalpla_core.storage.port import ObjectChanged
from kalpla_core.storage.s3 import S3Storage
from kalpla_core.testing import Factories
from tests.courses.structure_support import World, create_course, ok, problem, world
from tests.storage.test_s3 import (  # noqa: F401  (s3: the moto fixture)
    BUCKET,
    _default_encryption,
    _head,
    _s3_app,
    s3,
)

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 8
EVIL = b"%PDF-1.7\n" + b"\xff" * (len(PDF) - 9)  # same size and type, other bytes
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
EVIL_VIDEO = VIDEO[:12] + b"\xee" * (len(VIDEO) - 12)


def _confirm(client: Any, w: World, file_id: str) -> Any:
    return client.post(f"/api/v1/files/{file_id}/confirm", headers=w.auth(w.instructor))


def _download(client: Any, w: World, file_id: str) -> str:
    return ok(client.get(f"/api/v1/files/{file_id}/download",
                         headers=w.auth(w.instructor)))["url"]


def _status(client: Any, w: World, file_id: str) -> str:
    return ok(client.get(f"/api/v1/files/{file_id}", headers=w.auth(w.instructor)))["status"]


# --- local ------------------------------------------------------------------------------------

@pytest.fixture
def app(make_app: Any, tmp_path: Path) -> Any:
    return make_app(plugins=[], instance_path=str(tmp_path / "instance"))


def _stored(app: Any) -> list[str]:
    root = Path(app.extensions["kalpla"].settings.instance_path) / "files"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) \
        if root.exists() else []


def _ask_local(client: Any, w: World, course_id: str) -> dict[str, Any]:
    return ok(client.post("/api/v1/files", headers=w.auth(w.instructor), json={
        "course_id": course_id, "purpose": "resource", "filename": "notes.pdf",
        "content_type": "application/pdf", "size": len(PDF)}), 201)


def _put(client: Any, asked: dict[str, Any], data: bytes) -> Any:
    upload = asked["upload"]
    return client.put(upload["url"], data=data, headers=upload["headers"])


def test_local_replay_after_confirm_or_delete_changes_nothing(app, factories):
    client = app.test_client()
    w = world(factories)
    course_id = create_course(client, w)
    asked = _ask_local(client, w, course_id)
    assert _put(client, asked, PDF).status_code == 204
    ok(_confirm(client, w, asked["id"]))
    url = _download(client, w, asked["id"])

    assert problem(_put(client, asked, EVIL), 409)["type"] == "urn:kalpla:problem:upload-closed"
    assert client.get(url).data == PDF
    assert client.get(_download(client, w, asked["id"])).data == PDF

    # Deleted: the link stores nothing that no row would ever account for.
    assert client.delete(f"/api/v1/files/{asked['id']}",
                         headers=w.auth(w.instructor)).status_code == 204
    assert _stored(app) == []
    assert problem(_put(client, asked, PDF), 409)["type"] == "urn:kalpla:problem:upload-closed"
    assert _stored(app) == []


def test_local_upload_closed_while_it_streamed_is_not_kept(app, factories, monkeypatch):
    client = app.test_client()
    w = world(factories)
    asked = _ask_local(client, w, create_course(client, w))
    receive = LocalStorage.receive

    def receive_after_deletion(self: LocalStorage, key: str, stream: Any, **kw: Any) -> int:
        # The file is deleted (or purged) while its body is on the way.
        with app.extensions["kalpla"].db.session() as s:
            s.execute(delete(StoredFile).where(StoredFile.id == asked["id"]))
        return receive(self, key, stream, **kw)

    monkeypatch.setattr(LocalStorage, "receive", receive_after_deletion)
    assert problem(_put(client, asked, PDF), 409)["type"] == "urn:kalpla:problem:upload-closed"
    assert _stored(app) == []


def test_local_object_replaced_between_check_and_copy_is_not_kept(app, factories,
                                                                   monkeypatch):
    client = app.test_client()
    w = world(factories)
    asked = _ask_local(client, w, create_course(client, w))
    assert _put(client, asked, PDF).status_code == 204
    key = f"uploads/{w.school.id}/{asked['id']}"
    stat = LocalStorage.stat

    def stat_then_replace(self: LocalStorage, at: str) -> Any:
        checked = stat(self, at)
        # Another object takes the key right after the check (same size, same type).
        self.delete(at)
        self.receive(at, _Body(EVIL), max_size=len(EVIL), content_type="application/pdf",
                     filename="notes.pdf")
        return checked

    monkeypatch.setattr(LocalStorage, "stat", stat_then_replace)
    body = problem(_confirm(client, w, asked["id"]), 409)
    assert body["type"] == "urn:kalpla:problem:upload-changed"
    assert _status(client, w, asked["id"]) == "pending"
    assert _stored(app) == [key, f"{key}.json"]  # nothing at the final key

    # The object now there is checked like any other before it is kept.
    monkeypatch.setattr(LocalStorage, "stat", stat)
    ready = ok(_confirm(client, w, asked["id"]))
    assert ready["status"] == "ready"
    assert client.get(_download(client, w, asked["id"])).data == EVIL


def test_local_finalize_keeps_only_the_checked_file(app):
    local = app.extensions["kalpla"].providers.get("storage", "local", app)
    upload, final = "inst/" + "a" * 32, "inst/ready/" + "a" * 32
    local.receive(upload, _Body(PDF), max_size=len(PDF), content_type="application/pdf",
                  filename="notes.pdf")
    checked = local.stat(upload)
    assert checked is not None and checked.etag
    kept = local.finalize(upload, final, checked)
    assert (kept.size, kept.content_type, kept.sha256) == (len(PDF), "application/pdf",
                                                           checked.sha256)
    assert local.path(final).read_bytes() == PDF and local.meta(final) == local.meta(upload)
    # Retried (a confirm whose commit failed): the final key is replaced, not refused.
    assert local.finalize(upload, final, checked).sha256 == checked.sha256
    # Same bytes, but another file than the one checked: refused.
    local.delete(upload)
    local.receive(upload, _Body(PDF), max_size=len(PDF), content_type="application/pdf",
                  filename="notes.pdf")
    with pytest.raises(ObjectChanged):
        local.finalize(upload, final, checked)
    local.delete(upload)
    with pytest.raises(ObjectChanged):
        local.finalize(upload, final, checked)
    assert sorted(p.name for p in local.path(final).parent.iterdir()) == [
        "a" * 32, "a" * 32 + ".json"]  # no temporary file left


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int) -> bytes:
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


# --- S3 ---------------------------------------------------------------------------------------

@pytest.fixture
def s3_app(make_app: Any, s3: Any) -> Any:  # noqa: F811
    _default_encryption(s3, "AES256")
    return _s3_app(make_app)


def _ask_s3(client: Any, w: World, course_id: str) -> dict[str, Any]:
    return ok(client.post("/api/v1/files", headers=w.auth(w.instructor), json={
        "course_id": course_id, "purpose": "video", "filename": "Week 1.mp4",
        "content_type": "video/mp4", "size": len(VIDEO)}), 201)


def _post(asked: dict[str, Any], data: bytes) -> None:
    upload = asked["upload"]
    sent = requests.post(upload["url"], data=upload["fields"], timeout=5,
                         files={"file": ("Week 1.mp4", data, "video/mp4")})
    assert sent.status_code == 204


def _enforce_copy_source_if_match(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make moto answer a conditional copy as S3 does (moto 5.2 checks only
    ``x-amz-copy-source-if-none-match``): 412 PreconditionFailed when the source's ETag is
    not the one given. The conditions seen are returned."""
    seen: list[str] = []
    copy_object = S3Response.copy_object

    def conditional_copy_object(self: S3Response) -> Any:
        wanted = self.headers.get("x-amz-copy-source-if-match")
        if wanted is not None:
            seen.append(wanted)
            source = unquote(urlparse(self.headers["x-amz-copy-source"]).path).lstrip("/")
            bucket, key = source.split("/", 1)
            current = self.backend.get_object(bucket, key)
            if current is not None and wanted not in (current.etag, current.etag.strip('"')):
                raise PreconditionFailed(failed_condition="x-amz-copy-source-If-Match")
        return copy_object(self)

    monkeypatch.setattr(S3Response, "copy_object", conditional_copy_object)
    return seen


def test_s3_replay_after_confirm_does_not_change_downloads(s3_app, s3):  # noqa: F811
    client = s3_app.test_client()
    w = world(Factories(s3_app))
    asked = _ask_s3(client, w, create_course(client, w))
    _post(asked, VIDEO)
    ok(_confirm(client, w, asked["id"]))
    url = _download(client, w, asked["id"])

    # S3 takes the replayed form while its policy lasts, at the upload key only.
    _post(asked, EVIL_VIDEO)
    assert requests.get(url, timeout=5).content == VIDEO
    assert requests.get(_download(client, w, asked["id"]), timeout=5).content == VIDEO
    assert _head(s3, f"{w.school.id}/ready/{asked['id']}")["ContentLength"] == len(VIDEO)

    # Deleting the file deletes what a replay left at the upload key too.
    assert client.delete(f"/api/v1/files/{asked['id']}",
                         headers=w.auth(w.instructor)).status_code == 204
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


def test_s3_object_replaced_between_check_and_copy_is_not_kept(s3_app, s3,  # noqa: F811
                                                               monkeypatch):
    client = s3_app.test_client()
    w = world(Factories(s3_app))
    seen = _enforce_copy_source_if_match(monkeypatch)
    asked = _ask_s3(client, w, create_course(client, w))
    _post(asked, VIDEO)
    key, final = f"uploads/{w.school.id}/{asked['id']}", f"{w.school.id}/ready/{asked['id']}"
    checked_etag = _head(s3, key)["ETag"]
    stat = S3Storage.stat

    def stat_then_replace(self: S3Storage, at: str) -> Any:
        checked = stat(self, at)
        _post(asked, EVIL_VIDEO)  # the uploader replays the form right after the check
        return checked

    monkeypatch.setattr(S3Storage, "stat", stat_then_replace)
    body = problem(_confirm(client, w, asked["id"]), 409)
    assert body["type"] == "urn:kalpla:problem:upload-changed"
    assert seen == [checked_etag]  # the copy was conditional on the checked ETag
    assert _head(s3, final) is None
    assert _status(client, w, asked["id"]) == "pending"

    # Confirmed again, the object now there is what is checked and kept.
    monkeypatch.setattr(S3Storage, "stat", stat)
    ok(_confirm(client, w, asked["id"]))
    assert requests.get(_download(client, w, asked["id"]), timeout=5).content == EVIL_VIDEO
    assert _head(s3, key) is None


def test_s3_finalize_encrypts_the_copy_whatever_the_bucket_default(make_app,
                                                                    s3):  # noqa: F811
    app = _s3_app(make_app)  # no default encryption on this bucket
    provider = app.extensions["kalpla"].providers.get("storage", "s3", app)
    s3.put_object(Bucket=BUCKET, Key="inst/upload", Body=VIDEO, ContentType="video/mp4",
                  ServerSideEncryption="AES256")
    checked = provider.stat("inst/upload")
    assert checked is not None and checked.etag
    kept = provider.finalize("inst/upload", "inst/ready/upload", checked)
    assert kept.encryption == "AES256" and kept.size == len(VIDEO)
    head = _head(s3, "inst/ready/upload")
    assert head["ServerSideEncryption"] == "AES256" and head["ContentType"] == "video/mp4"
    with pytest.raises(ObjectChanged):
        provider.finalize("inst/missing", "inst/ready/missing", checked)
    with pytest.raises(ValueError):
        provider.finalize("inst/upload", "inst/ready/upload", checked.__class__(1, None))


def test_a_provider_without_finalize_keeps_files_at_their_upload_key(app, factories,
                                                                     monkeypatch, caplog):
    # A third-party provider written before the port had finalize() still confirms.
    monkeypatch.delattr(LocalStorage, "finalize")
    client = app.test_client()
    w = world(factories)
    asked = _ask_local(client, w, create_course(client, w))
    assert _put(client, asked, PDF).status_code == 204
    ok(_confirm(client, w, asked["id"]))
    assert "has no finalize()" in caplog.text
    key = f"uploads/{w.school.id}/{asked['id']}"
    assert _stored(app) == [key, f"{key}.json"]
    assert client.get(_download(client, w, asked["id"])).data == PDF
    assert client.delete(f"/api/v1/files/{asked['id']}",
                         headers=w.auth(w.instructor)).status_code == 204
    assert _stored(app) == []


def test_files_from_before_final_keys_keep_working(app, factories):
    """Rows asked for (and confirmed) before upload keys moved under uploads/."""
    client = app.test_client()
    w = world(factories)
    course_id = create_course(client, w)
    local = app.extensions["kalpla"].providers.get("storage", "local", app)
    pending, confirmed = _ask_local(client, w, course_id), _ask_local(client, w, course_id)
    old = {f["id"]: f"{w.school.id}/{f['id']}" for f in (pending, confirmed)}
    with app.extensions["kalpla"].db.session() as s:
        for file_id, key in old.items():
            s.execute(update(StoredFile).where(StoredFile.id == file_id).values(
                storage_key=key, status="ready" if file_id == confirmed["id"] else "pending"))
    local.receive(old[confirmed["id"]], _Body(PDF), max_size=len(PDF),
                  content_type="application/pdf", filename="notes.pdf")
    # Instructions handed out before the change, for the old key.
    instructions = local.upload(old[pending["id"]], content_type="application/pdf",
                                size=len(PDF), filename="notes.pdf", ttl=60)
    legacy = {"upload": {"url": instructions.url, "headers": dict(instructions.headers)}}
    assert _put(client, legacy, PDF).status_code == 204
    ok(_confirm(client, w, pending["id"]))
    assert problem(_put(client, legacy, EVIL), 409)["type"] == \
        "urn:kalpla:problem:upload-closed"
    assert client.get(_download(client, w, pending["id"])).data == PDF
    assert client.get(_download(client, w, confirmed["id"])).data == PDF
    assert _stored(app) == sorted([
        old[confirmed["id"]], f"{old[confirmed['id']]}.json",
        f"{w.school.id}/ready/{pending['id']}", f"{w.school.id}/ready/{pending['id']}.json"])
    for file_id in old:
        assert client.delete(f"/api/v1/files/{file_id}",
                             headers=w.auth(w.instructor)).status_code == 204
    assert _stored(app) == []


def test_concurrent_confirms_keep_one_object(app, factories, monkeypatch):
    # Both check, then both copy (no lock is held across a copy) the same uploaded file to
    # the same final key; one marks the file ready, the other finds it so and keeps the copy.
    client = app.test_client()
    w = world(factories)
    asked = _ask_local(client, w, create_course(client, w))
    assert _put(client, asked, PDF).status_code == 204
    both_checked = threading.Barrier(2, timeout=30)
    stat, finalize = LocalStorage.stat, LocalStorage.finalize
    copies: list[str] = []

    def stat_together(self: LocalStorage, key: str) -> Any:
        checked = stat(self, key)
        both_checked.wait()  # neither takes the lock before both have checked
        return checked

    def counted_finalize(self: LocalStorage, *args: Any) -> Any:
        copies.append(args[1])
        return finalize(self, *args)

    monkeypatch.setattr(LocalStorage, "stat", stat_together)
    monkeypatch.setattr(LocalStorage, "finalize", counted_finalize)
    answers: list[Any] = []

    def confirm() -> None:
        response = _confirm(app.test_client(), w, asked["id"])
        answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=confirm) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1] == answers[1][1] and answers[0][1]["status"] == "ready"
    final = f"{w.school.id}/ready/{asked['id']}"
    assert copies == [final, final]
    assert _stored(app) == [final, f"{final}.json"]
    monkeypatch.setattr(LocalStorage, "stat", stat)
    assert client.get(_download(client, w, asked["id"])).data == PDF


def test_a_confirm_checking_after_another_made_the_file_ready_answers_alike(app, factories,
                                                                             monkeypatch):
    # A retried confirm read the file as pending, then the first confirm committed and
    # deleted the upload key before the retry looked at it: the file is ready, not missing.
    client = app.test_client()
    w = world(factories)
    asked = _ask_local(client, w, create_course(client, w))
    assert _put(client, asked, PDF).status_code == 204
    stat = LocalStorage.stat
    first: list[Any] = []

    def stat_after_the_other_confirm(self: LocalStorage, key: str) -> Any:
        if not first:
            first.append(None)
            other = threading.Thread(target=lambda: first.append(
                _confirm(app.test_client(), w, asked["id"]).status_code))
            other.start()
            other.join(60)
        return stat(self, key)

    monkeypatch.setattr(LocalStorage, "stat", stat_after_the_other_confirm)
    body = ok(_confirm(client, w, asked["id"]))
    assert first == [None, 200]
    assert body["status"] == "ready"
    assert client.get(_download(client, w, asked["id"])).data == PDF


def test_a_local_upload_holds_no_database_connection_while_its_body_streams(app, factories,
                                                                             monkeypatch):
    # A body may take minutes to come: the database pool is not the uploaders' to exhaust.
    client = app.test_client()
    w = world(factories)
    asked = _ask_local(client, w, create_course(client, w))
    engine = app.extensions["kalpla"].db.engine
    receive = LocalStorage.receive
    held: list[int] = []

    def receive_counting(self: LocalStorage, key: str, stream: Any, **kw: Any) -> int:
        held.append(engine.pool.checkedout())
        return receive(self, key, stream, **kw)

    monkeypatch.setattr(LocalStorage, "receive", receive_counting)
    before = engine.pool.checkedout()
    assert _put(client, asked, PDF).status_code == 204
    assert held == [before]
    ok(_confirm(client, w, asked["id"]))
