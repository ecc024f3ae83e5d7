"""Purging abandoned uploads (``kalpla files purge-pending``, the ``core.purge_pending_files``
job): pending files past their upload window and a grace period lose their objects, then
their rows; everything else stays. On the ``local`` provider, over HTTP."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select, update

from kalpla_core.cli import make_cli
from kalpla_core.db import utcnow
from kalpla_core.jobs.models import Job
from kalpla_core.storage.local import LocalStorage
from kalpla_core.storage.models import StoredFile
from kalpla_core.storage.purge import JOB, PurgeResult, purge_pending
from kalpla_core.testing import Factories
from tests.courses.structure_support import World, create_course, ok, problem, world
from tests.storage.test_s3 import (  # noqa: F401  (s3: the moto fixture)
    BUCKET,
    VIDEO,
    _default_encryption,
    _s3_app,
    s3,
)

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 8


@pytest.fixture
def app(make_app: Any, tmp_path: Path) -> Any:
    return make_app(plugins=[], instance_path=str(tmp_path / "instance"))


def _stored(app: Any) -> list[str]:
    root = Path(app.extensions["kalpla"].settings.instance_path) / "files"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) \
        if root.exists() else []


def _local(app: Any) -> LocalStorage:
    provider = app.extensions["kalpla"].providers.get("storage", "local", app)
    assert isinstance(provider, LocalStorage)
    return provider


def _ask(client: Any, w: World, course_id: str, data: bytes = PDF) -> dict[str, Any]:
    return ok(client.post("/api/v1/files", headers=w.auth(w.instructor), json={
        "course_id": course_id, "purpose": "resource", "filename": "notes.pdf",
        "content_type": "application/pdf", "size": len(data)}), 201)


def _put(client: Any, asked: dict[str, Any], data: bytes = PDF) -> None:
    upload = asked["upload"]
    assert client.put(upload["url"], data=data, headers=upload["headers"]).status_code == 204


def _confirm(client: Any, w: World, file_id: str) -> Any:
    return client.post(f"/api/v1/files/{file_id}/confirm", headers=w.auth(w.instructor))


def _age(app: Any, file_ids: list[str], minutes: int) -> None:
    """Make the files as old as if they had been asked for ``minutes`` ago."""
    with app.extensions["kalpla"].db.session() as s:
        s.execute(update(StoredFile).where(StoredFile.id.in_(file_ids))
                  .values(created_at=utcnow() - timedelta(minutes=minutes)))


def _rows(app: Any) -> dict[str, str]:
    with app.extensions["kalpla"].db.session() as s:
        return {row.id: row.status for row in s.execute(select(StoredFile.id, StoredFile.status))}


def test_abandoned_uploads_are_purged_and_nothing_else(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    kalpla = app.extensions["kalpla"]
    never_sent = _ask(client, w, course_id)
    never_confirmed = _ask(client, w, course_id)
    _put(client, never_confirmed)
    refused = _ask(client, w, course_id)
    _put(client, refused, PDF[:-1])
    assert problem(_confirm(client, w, refused["id"]), 422)["type"] == \
        "urn:kalpla:problem:upload-rejected"
    # A confirm whose copy to the final key happened but whose commit did not.
    half_confirmed = _ask(client, w, course_id)
    _put(client, half_confirmed)
    inst = w.school.id
    local = _local(app)
    uploaded = f"uploads/{inst}/{half_confirmed['id']}"
    local.finalize(uploaded, f"{inst}/ready/{half_confirmed['id']}", local.stat(uploaded))
    ready = _ask(client, w, course_id)
    _put(client, ready)
    ok(_confirm(client, w, ready["id"]))
    recent = _ask(client, w, course_id)
    _put(client, recent)
    old = [never_sent["id"], never_confirmed["id"], refused["id"], half_confirmed["id"],
           ready["id"]]
    # 15 minutes of upload window + 60 of grace: 76 minutes ago is past both.
    _age(app, old, 76)
    _age(app, [recent["id"]], 74)

    assert purge_pending(kalpla) == PurgeResult(purged=4, failed=0)
    assert _rows(app) == {ready["id"]: "ready", recent["id"]: "pending"}
    assert _stored(app) == sorted([
        f"{inst}/ready/{ready['id']}", f"{inst}/ready/{ready['id']}.json",
        f"uploads/{inst}/{recent['id']}", f"uploads/{inst}/{recent['id']}.json"])
    # The ready file still downloads; the purged one is gone for its staff too.
    link = ok(client.get(f"/api/v1/files/{ready['id']}/download",
                         headers=w.auth(w.instructor)))["url"]
    assert client.get(link).data == PDF
    problem(_confirm(client, w, never_confirmed["id"]), 404)
    # An upload link of a purged file stores nothing, even were it still valid.
    assert problem(client.put(never_sent["upload"]["url"], data=PDF,
                              headers=never_sent["upload"]["headers"]), 409)["type"] == \
        "urn:kalpla:problem:upload-closed"

    # Nothing more to do; a shorter grace reaches the recent one.
    assert purge_pending(kalpla) == PurgeResult(0, 0)
    assert purge_pending(kalpla, older_than=timedelta(minutes=30)) == PurgeResult(1, 0)
    assert _rows(app) == {ready["id"]: "ready"}


def test_purge_goes_in_batches_and_a_failure_stops_only_its_file(app, client, factories,
                                                                  monkeypatch, caplog):
    w = world(factories)
    course_id = create_course(client, w)
    kalpla = app.extensions["kalpla"]
    files = [_ask(client, w, course_id) for _ in range(5)]
    for asked in files:
        _put(client, asked)
    _age(app, [f["id"] for f in files], 120)
    stuck = files[2]["id"]
    delete = LocalStorage.delete

    def failing_delete(self: LocalStorage, key: str) -> None:
        if key.endswith(stuck):
            raise OSError("device not ready")
        delete(self, key)

    monkeypatch.setattr(LocalStorage, "delete", failing_delete)
    with caplog.at_level(logging.ERROR, logger="kalpla.storage"):
        assert purge_pending(kalpla, batch=2) == PurgeResult(purged=4, failed=1)
    assert [r.file_id for r in caplog.records
            if r.getMessage() == "a pending upload could not be purged"] == [stuck]
    # The row stays while an object may: nothing is half-purged, the next run retries.
    assert _rows(app) == {stuck: "pending"}
    assert f"uploads/{w.school.id}/{stuck}" in _stored(app)

    monkeypatch.setattr(LocalStorage, "delete", delete)
    assert purge_pending(kalpla, batch=2) == PurgeResult(purged=1, failed=0)
    assert _rows(app) == {} and _stored(app) == []


def test_batches_read_a_bounded_number_of_rows(app, client, factories, query_counter):
    w = world(factories)
    course_id = create_course(client, w)
    files = [_ask(client, w, course_id) for _ in range(7)]
    _age(app, [f["id"] for f in files], 120)
    with query_counter() as counted:
        assert purge_pending(app.extensions["kalpla"], batch=3) == PurgeResult(7, 0)
    # Three batch reads (3 + 3 + 1 rows), then per file its locked read and its delete.
    selects = [q for q in counted.statements if q.lstrip().upper().startswith("SELECT")]
    batch_reads = [q for q in selects if "LIMIT" in q.upper()]
    assert len(batch_reads) == 3


def test_the_command_line_reports_and_fails_on_failures(app, client, factories, make_app,
                                                        monkeypatch):
    w = world(factories)
    course_id = create_course(client, w)
    files = [_ask(client, w, course_id) for _ in range(3)]
    _age(app, [f["id"] for f in files[:2]], 50)
    _age(app, [files[2]["id"]], 20)
    instance = app.extensions["kalpla"].settings.instance_path

    def purge(*args: str) -> Any:
        # A fresh app per command, on the same database and files.
        cli = make_cli(lambda: make_app(plugins=[], instance_path=instance))
        return CliRunner().invoke(cli, ["files", "purge-pending", *args])

    result = purge()
    assert result.exit_code == 0, result.output
    assert result.output == "0 pending upload(s) purged, 0 failed.\n"
    result = purge("--older-than", "30")
    assert result.exit_code == 0, result.output
    assert result.output == "2 pending upload(s) purged, 0 failed.\n"
    assert list(_rows(app)) == [files[2]["id"]]

    result = purge("--older-than", "-5")
    assert result.exit_code == 2 and "--older-than" in result.output

    def broken(self: LocalStorage, key: str) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(LocalStorage, "delete", broken)
    result = purge("--older-than", "0")
    assert result.exit_code == 1
    assert result.output == "0 pending upload(s) purged, 1 failed.\n"
    assert list(_rows(app)) == [files[2]["id"]]


def test_the_job_purges_and_refuses_bad_parameters(app, client, factories):
    w = world(factories)
    course_id = create_course(client, w)
    asked = _ask(client, w, course_id)
    _put(client, asked)
    _age(app, [asked["id"]], 100)
    kalpla = app.extensions["kalpla"]
    with kalpla.db.session() as s:
        good = kalpla.jobs.enqueue(s, JOB, {}).id
        bad = kalpla.jobs.enqueue(s, JOB, {"older_than_minutes": -1}).id
    assert kalpla.jobs.wait(30)
    assert kalpla.jobs.is_retry_safe(JOB)
    with kalpla.db.session() as s:
        done, refused = s.get(Job, good), s.get(Job, bad)
        assert done is not None and refused is not None
        assert done.status == "succeeded"
        assert done.result == {"purged": 1, "failed": 0, "older_than_minutes": 60}
        assert refused.status == "failed"
        assert refused.error == "older_than_minutes must be a whole number of minutes, 0 or " \
                                "more."
    assert _rows(app) == {} and _stored(app) == []


def test_a_file_purged_while_its_confirm_checks_it_is_not_kept(app, client, factories,
                                                              monkeypatch):
    w = world(factories)
    asked = _ask(client, w, create_course(client, w))
    _put(client, asked)
    _age(app, [asked["id"]], 120)
    stat = LocalStorage.stat

    def stat_then_purge(self: LocalStorage, key: str) -> Any:
        checked = stat(self, key)
        assert purge_pending(app.extensions["kalpla"]) == PurgeResult(1, 0)
        return checked

    monkeypatch.setattr(LocalStorage, "stat", stat_then_purge)
    problem(_confirm(client, w, asked["id"]), 404)
    assert _rows(app) == {} and _stored(app) == []


def test_abandoned_s3_uploads_are_purged(make_app, s3):  # noqa: F811
    _default_encryption(s3, "AES256")
    app = _s3_app(make_app)
    client = app.test_client()
    w = world(Factories(app))
    asked = ok(client.post("/api/v1/files", headers=w.auth(w.instructor), json={
        "course_id": create_course(client, w), "purpose": "video", "filename": "a.mp4",
        "content_type": "video/mp4", "size": len(VIDEO)}), 201)
    upload = asked["upload"]
    assert requests.post(upload["url"], data=upload["fields"], timeout=5, files={
        "file": ("a.mp4", VIDEO, "video/mp4")}).status_code == 204
    # As if a confirm had copied it and then failed to commit.
    s3.copy_object(Bucket=BUCKET, Key=f"{w.school.id}/ready/{asked['id']}",
                   CopySource={"Bucket": BUCKET, "Key": f"uploads/{w.school.id}/{asked['id']}"})
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 2
    _age(app, [asked["id"]], 90)
    assert purge_pending(app.extensions["kalpla"]) == PurgeResult(1, 0)
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    assert _rows(app) == {}
