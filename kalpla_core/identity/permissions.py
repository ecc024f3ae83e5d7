"""Permissions: named strings registered by the core and plugins, granted to institution roles.

A platform admin holds every permission everywhere; otherwise a user holds a permission in an
institution when one of their roles there is granted it.

A user's roles in an institution are read once per transaction and kept in ``session.info``:
the cache is dropped when any transaction of the session ends (commit, rollback, savepoint),
when a flush writes a Membership, and when the session runs a bulk INSERT/UPDATE/DELETE; a
pending (unflushed) Membership change bypasses it so the read autoflushes as before. Nothing
is kept across sessions or processes.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import event, select
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, UOWTransaction

from kalpla_core.contract import Permission
from kalpla_core.identity.models import ROLES, Membership, User


class PermissionRegistry:
    def __init__(self) -> None:
        self.permissions: dict[str, Permission] = {}
        self.owner: dict[str, str] = {}

    def register(self, plugin: str, permission: Permission) -> None:
        if plugin != "core" and not permission.name.startswith(f"{plugin}."):
            raise ValueError(f"permission {permission.name!r} of plugin {plugin!r} must start "
                             f"with {plugin + '.'!r}")
        if permission.name in self.permissions:
            raise ValueError(f"permission {permission.name!r} is registered twice "
                             f"({self.owner[permission.name]} and {plugin})")
        unknown = set(permission.default_roles) - set(ROLES)
        if unknown:
            raise ValueError(f"permission {permission.name!r} names unknown roles {unknown}")
        self.permissions[permission.name] = permission
        self.owner[permission.name] = plugin

    def granted_to(self, roles: Iterable[str]) -> set[str]:
        roles = set(roles)
        return {name for name, p in self.permissions.items() if roles & set(p.default_roles)}


_ROLES_CACHE = "kalpla.roles"


def _membership_pending(session: Session) -> bool:
    """Whether the session holds a Membership added, changed or deleted but not yet flushed."""
    return any(isinstance(obj, Membership)
               for pending in (session.new, session.dirty, session.deleted) for obj in pending)


def _drop_roles(session: Session) -> None:
    session.info.pop(_ROLES_CACHE, None)


def roles_of(session: Session, user_id: str, institution_id: str) -> set[str]:
    cached: dict[tuple[str, str], frozenset[str]] | None = session.info.get(_ROLES_CACHE)
    key = (user_id, institution_id)
    if cached is not None and key in cached and not _membership_pending(session):
        return set(cached[key])
    roles = frozenset(session.scalars(select(Membership.role).where(
        Membership.user_id == user_id, Membership.institution_id == institution_id)))
    # Fetched after the read: its autobegin/autoflush may have dropped the previous cache.
    session.info.setdefault(_ROLES_CACHE, {})[key] = roles
    return set(roles)


@event.listens_for(Session, "after_transaction_end")
def _drop_roles_at_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction or a savepoint (a rolled-back one may have held a role change);
    # a flush's own subtransaction is left to the after_flush hook below.
    if transaction.parent is None or transaction.nested:
        _drop_roles(session)


@event.listens_for(Session, "after_flush")
def _drop_roles_on_membership_flush(session: Session, flush: UOWTransaction) -> None:
    # Here session.new/dirty/deleted still describe what this flush wrote.
    if _membership_pending(session):
        _drop_roles(session)


@event.listens_for(Session, "do_orm_execute")
def _drop_roles_on_bulk_write(state: ORMExecuteState) -> None:
    # delete(Membership)/update(...) bypass the flush; any non-SELECT statement drops the cache.
    if not state.is_select:
        _drop_roles(state.session)


def has_permission(session: Session, registry: PermissionRegistry, user: User | None,
                   permission: str, institution_id: str | None) -> bool:
    if permission not in registry.permissions:
        raise KeyError(f"permission {permission!r} is not registered")
    if user is None or not user.is_active:
        return False
    if user.is_platform_admin:
        return True
    if institution_id is None:
        return False
    return permission in registry.granted_to(roles_of(session, user.id, institution_id))
