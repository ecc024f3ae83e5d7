"""Permissions: named strings registered by the core and plugins, granted to institution roles.

A platform admin holds every permission everywhere; otherwise a user holds a permission in an
institution when one of their roles there is granted it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

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


def roles_of(session: Session, user_id: str, institution_id: str) -> set[str]:
    return set(session.scalars(select(Membership.role).where(
        Membership.user_id == user_id, Membership.institution_id == institution_id)))


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
