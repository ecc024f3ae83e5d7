"""A caller's roles are read once per transaction: repeated permission checks share the read,
and a role change (in the same session, or committed by another) is seen by the next check."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, update

from kalpla_core.identity.models import Membership, User
from kalpla_core.testing import count_queries


def _memberships(q: Any) -> int:
    return sum(1 for st in q.statements if st.startswith("SELECT") and "memberships" in st)


def _setup(app: Any, factories: Any) -> tuple[Any, Any, str]:
    inst = factories.institution()
    user = factories.user(roles={inst: ["mentor"]})
    return app.extensions["kalpla"], inst, user.id


def test_two_checks_read_memberships_once(app, factories, db):
    kalpla, inst, uid = _setup(app, factories)
    user = db.get(User, uid)
    with count_queries(kalpla.db.engine) as q:
        assert kalpla.has_permission(db, user, "courses.create", inst.id)
        assert not kalpla.has_permission(db, user, "courses.manage_all", inst.id)
        assert not kalpla.has_permission(db, user, "members.manage", inst.id)
    assert _memberships(q) == 1


def test_other_institution_is_read_separately(app, factories, db):
    kalpla, inst, uid = _setup(app, factories)
    other = factories.institution()
    user = db.get(User, uid)
    with count_queries(kalpla.db.engine) as q:
        assert kalpla.has_permission(db, user, "courses.create", inst.id)
        assert not kalpla.has_permission(db, user, "courses.create", other.id)
    assert _memberships(q) == 2


def test_role_added_in_the_session_is_seen(app, factories, db):
    kalpla, inst, uid = _setup(app, factories)
    user = db.get(User, uid)
    assert not kalpla.has_permission(db, user, "members.manage", inst.id)
    db.add(Membership(user_id=uid, institution_id=inst.id, role="admin"))  # not flushed
    assert kalpla.has_permission(db, user, "members.manage", inst.id)
    with db.no_autoflush:  # flushed already: the read after the flush is cached again
        with count_queries(kalpla.db.engine) as q:
            assert kalpla.has_permission(db, user, "members.manage", inst.id)
        assert _memberships(q) == 0


def test_role_deleted_or_changed_in_the_session_is_seen(app, factories, db):
    kalpla, inst, uid = _setup(app, factories)
    user = db.get(User, uid)
    assert kalpla.has_permission(db, user, "courses.create", inst.id)
    membership = db.query(Membership).filter_by(user_id=uid).one()
    membership.role = "student"
    assert not kalpla.has_permission(db, user, "courses.create", inst.id)
    membership.role = "admin"
    db.flush()
    assert kalpla.has_permission(db, user, "members.manage", inst.id)
    db.delete(membership)
    assert not kalpla.has_permission(db, user, "members.manage", inst.id)


def test_bulk_statements_drop_the_cache(app, factories, db):
    kalpla, inst, uid = _setup(app, factories)
    user = db.get(User, uid)
    assert kalpla.has_permission(db, user, "courses.create", inst.id)
    db.execute(update(Membership).where(Membership.user_id == uid).values(role="admin"))
    assert kalpla.has_permission(db, user, "members.manage", inst.id)
    db.execute(delete(Membership).where(Membership.user_id == uid))
    assert not kalpla.has_permission(db, user, "members.manage", inst.id)


def test_rollback_drops_the_cache(app, factories, db):
    kalpla, inst, uid = _setup(app, factories)
    user = db.get(User, uid)
    db.add(Membership(user_id=uid, institution_id=inst.id, role="admin"))
    assert kalpla.has_permission(db, user, "members.manage", inst.id)
    db.rollback()
    user = db.get(User, uid)
    assert not kalpla.has_permission(db, user, "members.manage", inst.id)


def test_savepoint_rollback_drops_the_cache(app, factories, db):
    kalpla, inst, uid = _setup(app, factories)
    user = db.get(User, uid)
    with db.begin_nested() as nested:
        db.add(Membership(user_id=uid, institution_id=inst.id, role="admin"))
        assert kalpla.has_permission(db, user, "members.manage", inst.id)
        nested.rollback()
    assert not kalpla.has_permission(db, user, "members.manage", inst.id)


def test_a_change_committed_elsewhere_is_seen_by_the_next_transaction(app, factories, db):
    kalpla, inst, uid = _setup(app, factories)
    user = db.get(User, uid)
    assert not kalpla.has_permission(db, user, "members.manage", inst.id)
    db.commit()
    with kalpla.db.session() as other:
        other.add(Membership(user_id=uid, institution_id=inst.id, role="admin"))
    with count_queries(kalpla.db.engine) as q:
        assert kalpla.has_permission(db, user, "members.manage", inst.id)
    assert _memberships(q) == 1


def test_platform_admin_reads_no_roles(app, factories, db):
    kalpla = app.extensions["kalpla"]
    inst = factories.institution()
    admin = db.get(User, factories.user(platform_admin=True).id)
    with count_queries(kalpla.db.engine) as q:
        assert kalpla.has_permission(db, admin, "members.manage", inst.id)
    assert _memberships(q) == 0


def test_a_flush_of_other_rows_keeps_the_roles(app, factories, db):
    kalpla, inst, uid = _setup(app, factories)
    user = db.get(User, uid)
    assert kalpla.has_permission(db, user, "courses.create", inst.id)
    user.name = "Renamed"
    db.flush()
    with count_queries(kalpla.db.engine) as q:
        assert kalpla.has_permission(db, user, "courses.create", inst.id)
    assert _memberships(q) == 0
