"""A confirm reads, hashes and copies the uploaded object with no transaction open and no
database connection held, so the rest of the app writes meanwhile (on SQLite the write lock
is the whole database's); and a confirm that copied a file deleted or purged meanwhile
leaves nothing behind. On the ``local`` provider, and S3 (moto), over HTTP."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from kalpla_core.courses.models import Course
from kalpla_core.storage.local import LocalStorage
from kalpla_core.storage.models import StoredFile
from kalpla_core.storage.port import StoredObject
from kalpla_core.storage.purge import PurgeResult, purge_pending
from kalpla_core.storage.s3 import S3Storage
from kalpla_core.testing import Factories
from tests.courses.structure_support import create_course, ok, problem, world
from tests.storage.test_overwrite import VIDEO, _ask_s3, _post, s3_app  # noqa: F401
from tests.storage.test_purge import PDF, _age, _ask, _confirm, _put, _rows, _stored
from tests.storage.test_s3 import BUCKET, s3  # noqa: F401  (s3: the moto fixture)

WAIT = 30  # seconds a step waits for the other thread before the test fails


@pytest.fixture
def app(make_app: Any, tmp_path: Path) -> Any:
    return make_app(plugins=[], instance_path=str(tmp_path / "instance"))


def test_others_write_while_a_confirm_copies_the_upload(app, client, factories, monkeypatch):
    w = world(factories)
    course_id = create_course(client, w)
    asked = _ask(client, w, course_id)
    _put(client, asked)
    kalpla = app.extensions["kalpla"]
    pool = kalpla.db.engine.pool
    stat, finalize = LocalStorage.stat, LocalStorage.finalize
    held: dict[str, int] = {}
    written = threading.Event()

    def write_elsewhere() -> None:
        # The file's own row (a row lock would stop this on PostgreSQL) and another table
        # (SQLite's write lock would).
        with kalpla.db.session() as s:
            s.execute(update(StoredFile).where(StoredFile.id == asked["id"])
                      .values(filename="renamed.pdf"))
            s.execute(update(Course).where(Course.id == course_id).values(title="Renamed"))
        written.set()

    def stat_counting(self: LocalStorage, key: str) -> StoredObject | None:
        held["stat"] = pool.checkedout()
        return stat(self, key)

    def finalize_while_another_writes(self: LocalStorage, upload: str, final: str,
                                      expect: StoredObject) -> StoredObject:
        held["finalize"] = pool.checkedout()
        writer = threading.Thread(target=write_elsewhere)
        writer.start()
        # Waits (at most WAIT seconds) for a write that a lock held here would block.
        held["written"] = int(written.wait(WAIT))
        writer.join(WAIT)
        return finalize(self, upload, final, expect)

    monkeypatch.setattr(LocalStorage, "stat", stat_counting)
    monkeypatch.setattr(LocalStorage, "finalize", finalize_while_another_writes)
    before = pool.checkedout()
    ready = ok(_confirm(client, w, asked["id"]))
    assert held == {"stat": before, "finalize": before, "written": 1}
    assert ready["status"] == "ready" and ready["filename"] == "renamed.pdf"
    with kalpla.db.session() as s:
        assert s.scalar(select(Course.title).where(Course.id == course_id)) == "Renamed"
    final = f"{w.school.id}/ready/{asked['id']}"
    assert _stored(app) == [final, f"{final}.json"]


def _delete(app: Any, client: Any, w: Any, file_id: str) -> None:
    assert client.delete(f"/api/v1/files/{file_id}",
                         headers=w.auth(w.instructor)).status_code == 204


def _purge(app: Any, client: Any, w: Any, file_id: str) -> None:
    _age(app, [file_id], 120)
    assert purge_pending(app.extensions["kalpla"]) == PurgeResult(1, 0)


@pytest.mark.parametrize("remove", [_delete, _purge], ids=["deleted", "purged"])
def test_a_copy_landing_after_its_file_was_removed_is_deleted(app, client, factories,
                                                              monkeypatch, remove):
    w = world(factories)
    asked = _ask(client, w, create_course(client, w))
    _put(client, asked)
    finalize = LocalStorage.finalize

    def finalize_outrun(self: LocalStorage, upload: str, final: str,
                        expect: StoredObject) -> StoredObject:
        kept = finalize(self, upload, final, expect)
        # As on S3, where a copy may finish after a deletion (or purge) committed and deleted
        # every key of the file: the copy is set aside while the file is removed.
        aside = {p: p.with_name(f"{p.name}.aside")
                 for p in (self.path(final), self._meta_path(final))}
        for path, moved in aside.items():
            path.rename(moved)
        remove(app, app.test_client(), w, asked["id"])
        for path, moved in aside.items():
            moved.rename(path)
        return kept

    monkeypatch.setattr(LocalStorage, "finalize", finalize_outrun)
    problem(_confirm(client, w, asked["id"]), 404)
    assert _rows(app) == {} and _stored(app) == []


def test_a_copy_of_a_file_another_confirm_made_ready_is_kept(app, client, factories,
                                                             monkeypatch):
    w = world(factories)
    asked = _ask(client, w, create_course(client, w))
    _put(client, asked)
    finalize = LocalStorage.finalize
    other: list[Any] = []

    def finalize_then_lose(self: LocalStorage, *args: Any) -> StoredObject:
        kept = finalize(self, *args)
        if not other:  # the other confirm copies too and marks the file ready first
            other.append(None)
            other.append(_confirm(app.test_client(), w, asked["id"]).get_json())
        return kept

    monkeypatch.setattr(LocalStorage, "finalize", finalize_then_lose)
    assert ok(_confirm(client, w, asked["id"])) == other[1]
    assert other[1]["status"] == "ready"
    final = f"{w.school.id}/ready/{asked['id']}"
    assert _stored(app) == [final, f"{final}.json"]
    url = ok(client.get(f"/api/v1/files/{asked['id']}/download",
                        headers=w.auth(w.instructor)))["url"]
    assert client.get(url).data == PDF


def test_a_ready_file_whose_row_names_another_key_loses_the_stray_copy(app, client, factories,
                                                                        monkeypatch):
    # The winner kept the file at its upload key (a provider without finalize, as before
    # final keys): the loser's copy at the final key is nobody's.
    w = world(factories)
    asked = _ask(client, w, create_course(client, w))
    _put(client, asked)
    upload = f"uploads/{w.school.id}/{asked['id']}"
    finalize = LocalStorage.finalize

    def finalize_then_lose(self: LocalStorage, *args: Any) -> StoredObject:
        kept = finalize(self, *args)
        with app.extensions["kalpla"].db.session() as s:
            s.execute(update(StoredFile).where(StoredFile.id == asked["id"])
                      .values(status="ready"))
        return kept

    monkeypatch.setattr(LocalStorage, "finalize", finalize_then_lose)
    body = ok(_confirm(client, w, asked["id"]))
    assert body["status"] == "ready"
    assert _stored(app) == [upload, f"{upload}.json"]


def test_an_s3_copy_landing_after_its_file_was_deleted_is_deleted(s3_app, s3,  # noqa: F811
                                                                  monkeypatch):
    client = s3_app.test_client()
    w = world(Factories(s3_app))
    asked = _ask_s3(client, w, create_course(client, w))
    _post(asked, VIDEO)
    finalize = S3Storage.finalize

    def finalize_outrun(self: S3Storage, upload: str, final: str,
                        expect: StoredObject) -> StoredObject:
        kept = finalize(self, upload, final, expect)
        # The copy finishes only after the deletion committed and deleted every key.
        copied = s3.get_object(Bucket=BUCKET, Key=final)["Body"].read()
        _delete(s3_app, s3_app.test_client(), w, asked["id"])
        s3.put_object(Bucket=BUCKET, Key=final, Body=copied, ContentType="video/mp4",
                      ServerSideEncryption="AES256")
        return kept

    monkeypatch.setattr(S3Storage, "finalize", finalize_outrun)
    problem(_confirm(client, w, asked["id"]), 404)
    assert _rows(s3_app) == {}
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
