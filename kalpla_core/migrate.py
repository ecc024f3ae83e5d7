"""Schema migrations: the core's Alembic history plus one branch per plugin.

``upgrade`` applies the core and every loaded plugin (or one plugin); ``downgrade`` takes any
Alembic target, such as ``example@base`` to remove a plugin's tables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

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

    with kalpla.db.session() as session:
        ensure_default_institution(session)


def downgrade(kalpla: Kalpla, target: str) -> None:
    with _config(kalpla) as cfg:
        command.downgrade(cfg, target)


def current(kalpla: Kalpla) -> dict[str, str | None]:
    """The applied revision of each branch (None where a branch is not applied)."""
    with _config(kalpla) as cfg:
        script = ScriptDirectory.from_config(cfg)
        heads = MigrationContext.configure(cfg.attributes["connection"]).get_current_heads()
        out: dict[str, str | None] = {}
        for rev_id in heads:
            for rev in script.walk_revisions(base="base", head=rev_id):
                labels = rev.branch_labels
                if labels:
                    for label in labels:
                        out.setdefault(label, rev_id)
                    break
        known = [CORE_BRANCH, *kalpla.plugins.migration_locations()]
        return {label: out.get(label) for label in known}


def heads(kalpla: Kalpla) -> dict[str, str]:
    """The newest revision of each branch in the scripts."""
    with _config(kalpla) as cfg:
        script = ScriptDirectory.from_config(cfg)
        out = {}
        for rev in script.get_revisions("heads"):
            for r in script.walk_revisions(base="base", head=rev.revision):
                if r.branch_labels:
                    out[next(iter(r.branch_labels))] = rev.revision
                    break
        return out
