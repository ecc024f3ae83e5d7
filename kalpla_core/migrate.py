"""Schema migrations: the core's Alembic history plus one branch per plugin.

``upgrade`` applies the core and every loaded plugin (or one plugin); ``downgrade`` takes any
Alembic target, such as ``example@base`` to remove a plugin's tables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

MIGRATIONS = Path(__file__).parent / "migrations"
CORE_BRANCH = "core"


@contextmanager
def _config(kalpla: Kalpla, out: StringIO | None = None) -> Iterator[Config]:
    cfg = Config(stdout=out) if out is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    locations = [MIGRATIONS / "versions", *kalpla.plugins.migration_locations().values()]
    cfg.set_main_option("version_locations", os.pathsep.join(str(p) for p in locations))
    with kalpla.db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        yield cfg


def upgrade(kalpla: Kalpla, plugin: str | None = None) -> list[str]:
    """Upgrade the core then each loaded plugin (or only ``plugin``); returns branches done."""
    if plugin is not None and plugin not in kalpla.plugins.names:
        raise LookupError(f"plugin {plugin!r} is not loaded")
    locations = kalpla.plugins.migration_locations(include_unloaded=False)
    if plugin is not None and plugin not in locations:
        raise LookupError(f"plugin {plugin!r} has no migrations")
    branches = [plugin] if plugin else [CORE_BRANCH, *[n for n in kalpla.plugins.names
                                                       if n in locations]]
    for branch in branches:
        with _config(kalpla) as cfg:
            command.upgrade(cfg, f"{branch}@head")
    _seed(kalpla)
    return branches


def _seed(kalpla: Kalpla) -> None:
    from kalpla_core.institutions.service import ensure_default_institution

    if current(kalpla)[CORE_BRANCH] != heads(kalpla)[CORE_BRANCH]:
        return  # only a plugin's dependency on part of the core was applied; seed later
    with kalpla.db.session() as session:
        ensure_default_institution(session)


def downgrade(kalpla: Kalpla, target: str) -> None:
    """Downgrade to any Alembic target; ``<plugin>@base`` removes that plugin's tables."""
    with _config(kalpla) as cfg:
        command.downgrade(cfg, target)


def _branch_of(rev: Script, labels: list[str]) -> str | None:
    # Alembic copies a branch's label onto every revision of the branch.
    return next((label for label in labels if label in rev.branch_labels), None)


def _applied(script: ScriptDirectory, heads: tuple[str, ...]) -> list[Script]:
    """Every revision the database has: its heads and their ancestors, dependencies included
    (a plugin revision that depends on a core revision leaves only itself in the version
    table)."""
    seen: dict[str, Script] = {}
    stack = list(heads)
    while stack:
        rev_id = stack.pop()
        if rev_id in seen:
            continue
        try:
            rev = script.get_revision(rev_id)
        except CommandError:
            rev = None
        if rev is None:
            raise LookupError(f"the database has revision {rev_id!r}, which neither the "
                              "core nor any installed plugin provides") from None
        seen[rev_id] = rev
        stack.extend([*_ids(rev.down_revision), *_ids(rev.dependencies)])
    return list(seen.values())


def _ids(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def current(kalpla: Kalpla) -> dict[str, str | None]:
    """The applied revision of each branch (None where a branch is not applied), for the core
    and every installed plugin with migrations, loaded or not."""
    known = [CORE_BRANCH, *kalpla.plugins.migration_locations()]
    with _config(kalpla) as cfg:
        script = ScriptDirectory.from_config(cfg)
        heads = MigrationContext.configure(cfg.attributes["connection"]).get_current_heads()
        applied = _applied(script, heads)
    # In each branch, the applied revision is the one no other applied revision builds on.
    below = {parent for rev in applied for parent in _ids(rev.down_revision)}
    out: dict[str, str | None] = dict.fromkeys(known)
    for rev in applied:
        branch = _branch_of(rev, known)
        if branch is not None and rev.revision not in below:
            out[branch] = rev.revision
    return out


def heads(kalpla: Kalpla) -> dict[str, str]:
    """The newest revision of each branch in the scripts."""
    known = [CORE_BRANCH, *kalpla.plugins.migration_locations()]
    with _config(kalpla) as cfg:
        script = ScriptDirectory.from_config(cfg)
        out = {}
        # get_heads, not get_revisions("heads"): the latter leaves out a core head that a
        # plugin branch depends on (as plugins' first revisions do).
        for head in script.get_heads():
            rev = script.get_revision(head)
            branch = _branch_of(rev, known)
            if branch is not None:
                out[branch] = rev.revision
        return out


def differences(kalpla: Kalpla) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the models of the core and
    the loaded plugins: empty when the migrations create exactly what the models declare.

    Tables of installed plugins that are not loaded are left out (they have no models here),
    and so are models on the metadata that belong to neither the core nor a loaded plugin.
    """
    from alembic.autogenerate import compare_metadata

    from kalpla_core.db import Base
    from kalpla_core.plugins.dispatch import core_tables

    owned = core_tables() | {model.__table__.name
                             for _, model in kalpla.plugins.collect("kalpla_models")}
    loaded = set(kalpla.plugins.names)
    unloaded = tuple(f"{name}_" for name in kalpla.plugins.migration_locations()
                     if name not in loaded)

    def include(_obj: Any, name: str | None, type_: str, reflected: bool,
                compare_to: Any) -> bool:
        if type_ != "table" or name is None:
            return True
        if not reflected:
            return name in owned
        return compare_to is not None or not (unloaded and name.startswith(unloaded))

    with kalpla.db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "compare_server_default": True, "include_object": include})
        return list(compare_metadata(context, Base.metadata))
