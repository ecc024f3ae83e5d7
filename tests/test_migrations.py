"""Migrations: the models agree with what the revisions create, and the branch commands (core
plus one branch per plugin) upgrade, report and remove exactly what they say.

Each test migrates an empty database of its own (``empty_database_url``): a SQLite file, or a
fresh PostgreSQL schema when ``KALPLA_TEST_DATABASE_URL`` is set.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, inspect, select, text

from kalpla_core import migrate
from kalpla_core.hookspecs import PluginMeta, hookimpl
from kalpla_core.institutions.models import DEFAULT_INSTITUTION_SLUG, Institution
from kalpla_core.version import __version__

# A plugin branch of its own, so that "only this branch" can be told from "every branch".
TALLY_REVISION = '''"""tally counts"""
import sqlalchemy as sa
from alembic import op

revision = "t0001"
down_revision = None
branch_labels = ("tally",)
depends_on = {core_root!r}


def upgrade() -> None:
    op.create_table(
        "tally_counts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("institution_id", sa.String(32),
                  sa.ForeignKey("institutions.id", ondelete="CASCADE"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tally_counts")
'''


def _core_root() -> str:
    script = ScriptDirectory(str(migrate.MIGRATIONS),
                             version_locations=[str(migrate.MIGRATIONS / "versions")])
    (root,) = script.get_bases()
    return root


@pytest.fixture
def tally(tmp_path: Path) -> types.ModuleType:
    """A plugin ``tally`` whose migration branch creates ``tally_counts`` (and no model)."""
    versions = tmp_path / "tally_versions"
    versions.mkdir()
    (versions / "t0001_tally_counts.py").write_text(
        TALLY_REVISION.replace("{core_root!r}", repr(_core_root())))
    module = types.ModuleType("kalpla_tally")
    module.KALPLA_PLUGIN = PluginMeta(  # type: ignore[attr-defined]
        name="tally", version="1.0.0", core_requires=f"=={__version__}")

    @hookimpl
    def kalpla_migrations() -> Path:
        return versions

    module.kalpla_migrations = kalpla_migrations  # type: ignore[attr-defined]
    return module


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def _institution_slugs(kalpla: Any) -> list[str]:
    with kalpla.db.session() as s:
        return list(s.scalars(select(Institution.slug).order_by(Institution.slug)))


# --- models and migrations agree ------------------------------------------------------------

def test_models_and_migrations_agree(make_app, empty_database_url):
    """Autogenerate finds nothing to do after the core and every installed plugin migrated."""
    kalpla = make_app(database_url=empty_database_url).extensions["kalpla"]
    migrate.upgrade(kalpla)
    assert migrate.differences(kalpla) == []


def _summary(diff: tuple[Any, ...]) -> tuple[str, str]:
    kind = diff[0]
    if kind in ("add_column", "remove_column"):
        return kind, f"{diff[2]}.{diff[3].name}"
    return kind, diff[1].name


def test_differences_report_drift(make_app, empty_database_url):
    kalpla = make_app(database_url=empty_database_url).extensions["kalpla"]
    migrate.upgrade(kalpla)
    with kalpla.db.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_jobs_owner_id"))
        conn.execute(text("ALTER TABLE jobs ADD COLUMN stray INTEGER"))
        conn.execute(text("CREATE TABLE stray_things (id INTEGER PRIMARY KEY)"))
    assert {_summary(d) for d in migrate.differences(kalpla)} == {
        ("add_index", "ix_jobs_owner_id"), ("remove_column", "jobs.stray"),
        ("remove_table", "stray_things")}


def test_tables_of_an_unloaded_plugin_are_not_drift(make_app, empty_database_url):
    migrate.upgrade(make_app(database_url=empty_database_url).extensions["kalpla"])
    without = make_app(database_url=empty_database_url, plugins=[]).extensions["kalpla"]
    assert "example_notes" in _tables(without.db.engine)
    assert migrate.differences(without) == []


# --- upgrade ----------------------------------------------------------------------------------

def _others(heads: dict[str, str], *names: str) -> dict[str, None]:
    """Every branch but ``names`` as not applied: installed plugins (the example, first-party
    plugins) the test does not load."""
    return {branch: None for branch in heads if branch not in names}


def test_upgrade_creates_the_default_institution_and_is_idempotent(make_app,
                                                                   empty_database_url):
    kalpla = make_app(database_url=empty_database_url).extensions["kalpla"]
    assert set(migrate.current(kalpla).values()) == {None}

    done = migrate.upgrade(kalpla)
    assert done[0] == "core" and "example" in done
    assert migrate.current(kalpla) == migrate.heads(kalpla)
    assert _institution_slugs(kalpla) == [DEFAULT_INSTITUTION_SLUG]
    with kalpla.db.session() as s:
        default_id = s.scalar(select(Institution.id))
        # One row per branch head, but a plugin revision depending on the core's head stands
        # for it too; a second upgrade adds none.
        versions = s.scalar(text("SELECT count(*) FROM alembic_version"))
        assert 1 <= versions <= len(done)

    assert migrate.upgrade(kalpla) == done
    assert migrate.current(kalpla) == migrate.heads(kalpla)
    with kalpla.db.session() as s:
        assert s.scalars(select(Institution.id)).all() == [default_id]
        assert s.scalar(text("SELECT count(*) FROM alembic_version")) == versions


def test_upgrade_of_one_plugin_leaves_other_branches_alone(make_app, empty_database_url,
                                                           tally):
    core_only = make_app(database_url=empty_database_url, plugins=[])
    assert migrate.upgrade(core_only.extensions["kalpla"]) == ["core"]
    kalpla = make_app(database_url=empty_database_url, plugins=["example", "tally"],
                      plugin_objects={"tally": tally}).extensions["kalpla"]
    heads = migrate.heads(kalpla)
    assert heads["tally"] == "t0001"
    others = _others(heads, "core", "tally")  # example, and any other installed plugin
    assert migrate.current(kalpla) == {**others, "core": heads["core"], "tally": None}

    assert migrate.upgrade(kalpla, plugin="tally") == ["tally"]
    assert migrate.current(kalpla) == {**others, "core": heads["core"], "tally": "t0001"}
    tables = _tables(kalpla.db.engine)
    assert "tally_counts" in tables and "example_notes" not in tables

    assert migrate.upgrade(kalpla, plugin="example") == ["example"]
    assert migrate.current(kalpla) == {**heads, **_others(heads, "core", "tally", "example")}


def test_upgrade_of_a_plugin_that_is_not_loaded_is_refused(make_app, empty_database_url, tally):
    kalpla = make_app(database_url=empty_database_url, plugins=["example"],
                      plugin_objects={"tally": tally}).extensions["kalpla"]
    with pytest.raises(LookupError, match="'tally' is not loaded"):
        migrate.upgrade(kalpla, plugin="tally")
    assert _tables(kalpla.db.engine) == set()


def test_plugin_branch_alone_on_an_empty_database_brings_its_core_dependency(
        make_app, empty_database_url, tally):
    kalpla = make_app(database_url=empty_database_url, plugins=["tally"],
                      plugin_objects={"tally": tally}).extensions["kalpla"]
    assert migrate.upgrade(kalpla, plugin="tally") == ["tally"]
    current = migrate.current(kalpla)
    assert current["tally"] == "t0001" and current["core"] == _core_root()
    # Seeding waits for the whole core; only its first revision is there now.
    core_is_whole = current["core"] == migrate.heads(kalpla)["core"]
    assert _institution_slugs(kalpla) == ([DEFAULT_INSTITUTION_SLUG] if core_is_whole else [])
    assert migrate.upgrade(kalpla) == ["core", "tally"]
    assert migrate.current(kalpla) == {**migrate.heads(kalpla),
                                       **_others(migrate.heads(kalpla), "core", "tally")}
    assert _institution_slugs(kalpla) == [DEFAULT_INSTITUTION_SLUG]


# --- downgrade --------------------------------------------------------------------------------

def _add_note(kalpla: Any) -> None:
    with kalpla.db.engine.begin() as conn:
        inst_id = conn.scalar(select(Institution.id))
        conn.execute(text("INSERT INTO example_notes (institution_id, body, created_at, title) "
                          "VALUES (:i, 'hello', CURRENT_TIMESTAMP, '')"), {"i": inst_id})


def test_downgrade_of_a_plugin_removes_only_its_tables(make_app, empty_database_url):
    kalpla = make_app(database_url=empty_database_url).extensions["kalpla"]
    migrate.upgrade(kalpla)
    _add_note(kalpla)
    before = migrate.current(kalpla)
    core_tables = _tables(kalpla.db.engine) - {"example_notes"}

    migrate.downgrade(kalpla, "example@base")
    assert _tables(kalpla.db.engine) == core_tables
    assert migrate.current(kalpla) == {**before, "example": None}
    assert _institution_slugs(kalpla) == [DEFAULT_INSTITUTION_SLUG]

    migrate.upgrade(kalpla)
    assert migrate.current(kalpla) == before
    with kalpla.db.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(text("example_notes"))) == 0


def test_installed_but_unloaded_plugin_is_still_located(make_app, empty_database_url):
    """A deployment that stopped loading a plugin can still read and remove its branch."""
    migrate.upgrade(make_app(database_url=empty_database_url).extensions["kalpla"])
    kalpla = make_app(database_url=empty_database_url, plugins=[]).extensions["kalpla"]
    assert "example" not in kalpla.plugins.names
    applied = migrate.current(kalpla)
    assert applied["example"] is not None
    assert migrate.heads(kalpla)["example"] == applied["example"]

    # Upgrading the loaded set does not bring back or touch the unloaded plugin's branch.
    assert migrate.upgrade(kalpla) == ["core"]
    migrate.downgrade(kalpla, "example@base")
    assert migrate.current(kalpla)["example"] is None
    assert "example_notes" not in _tables(kalpla.db.engine)
    assert migrate.upgrade(kalpla) == ["core"]
    assert "example_notes" not in _tables(kalpla.db.engine)


def test_revision_of_an_uninstalled_plugin_is_named(make_app, empty_database_url, tally):
    migrate.upgrade(make_app(database_url=empty_database_url, plugins=["tally"],
                             plugin_objects={"tally": tally}).extensions["kalpla"])
    kalpla = make_app(database_url=empty_database_url, plugins=[]).extensions["kalpla"]
    with pytest.raises(LookupError, match="'t0001'"):
        migrate.current(kalpla)
