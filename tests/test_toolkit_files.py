"""The toolkit's helpers for files a plugin's own storage provider holds: ``add_file`` records
a ready file of a lesson once per key, ``find_file`` finds it, ``file_download_url`` asks its
provider for a link; the core then reads it like any lesson file."""

from __future__ import annotations

from typing import Any

import pytest

from kalpla_core.storage.models import StoredFile
from kalpla_core.toolkit import add_file, file_download_url, find_file
from tests.courses.structure_support import (
    World,
    add_lesson,
    add_module,
    create_course,
    enroll,
    ok,
    problem,
    world,
)


@pytest.fixture
def w(app: Any, factories: Any) -> World:
    return world(factories)


def _course(client: Any, w: World) -> tuple[str, str]:
    course_id = create_course(client, w, publish=True)
    module = add_module(client, w, course_id)
    return course_id, add_lesson(client, w, module["id"])["id"]


def _add(app: Any, w: World, course_id: str, lesson_id: str | None, key: str = "rec/1",
         provider: str = "local") -> str:
    with app.extensions["kalpla"].db.session() as s:
        return add_file(s, institution_id=w.school.id, course_id=course_id,
                        lesson_id=lesson_id, provider=provider, storage_key=key,
                        filename="Recording — Week 1.mp4", content_type="video/mp4",
                        size=4096)


def test_a_file_is_recorded_once_per_key_and_read_like_a_lesson_file(app, client, w):
    course_id, lesson_id = _course(client, w)
    file_id = _add(app, w, course_id, lesson_id)
    assert _add(app, w, course_id, lesson_id) == file_id  # the same key: the same file
    with app.extensions["kalpla"].db.session() as s:
        assert find_file(s, provider="local", storage_key="rec/1") == file_id
        assert find_file(s, provider="s3", storage_key="rec/1") is None
        file = s.get(StoredFile, file_id)
        assert file is not None
        assert (file.status, file.purpose, file.lesson_id, file.size) == \
            ("ready", "resource", lesson_id, 4096)
        assert file.confirmed_at is not None
    enroll(app, w.enrolled, course_id)
    link = ok(client.get(f"/api/v1/files/{file_id}/download", headers=w.auth(w.enrolled)))
    assert link["filename"] == "Recording — Week 1.mp4" and link["expires_in"] == 3600
    problem(client.get(f"/api/v1/files/{file_id}/download", headers=w.auth(w.student)), 403)
    with app.test_request_context(), app.extensions["kalpla"].db.session() as s:
        url, seconds = file_download_url(s, file_id, ttl=60)
        assert seconds == 60 and "rec/1" in url


def test_what_add_file_refuses(app, client, w):
    course_id, lesson_id = _course(client, w)
    second = create_course(client, w, slug="second")
    with pytest.raises(ValueError, match="lesson"):  # a lesson of another course
        _add(app, w, second, lesson_id)
    _add(app, w, course_id, lesson_id, key="rec/2")
    with pytest.raises(ValueError, match="another file"):
        _add(app, w, course_id, lesson_id, key="rec/2", provider="s3")
    with pytest.raises(ValueError, match="another file"):  # another course's file there
        _add(app, w, second, None, key="rec/2")
    with app.extensions["kalpla"].db.session() as s, pytest.raises(ValueError, match="purpose"):
        add_file(s, institution_id=w.school.id, course_id=course_id, lesson_id=None,
                 provider="local", storage_key="rec/3", filename="x", content_type="video/mp4",
                 size=1, purpose="poster")
    with app.extensions["kalpla"].db.session() as s, pytest.raises(ValueError, match="course"):
        add_file(s, institution_id=w.other.id, course_id=course_id, lesson_id=None,
                 provider="local", storage_key="rec/4", filename="x", content_type="video/mp4",
                 size=1)
    with app.test_request_context(), app.extensions["kalpla"].db.session() as s:
        from kalpla_core.http.problems import APIError

        with pytest.raises(APIError):
            file_download_url(s, "0" * 32)
