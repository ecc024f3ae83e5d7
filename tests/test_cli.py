"""The ``kalpla`` command line, run through click's test runner on the test database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from kalpla_core import create_app
from kalpla_core.cli import make_cli
from kalpla_core.cli.serve import DevServer, build_server
from kalpla_core.demo import ACCOUNTS, COURSES, DEMO_PASSWORD
from kalpla_core.hookspecs import PluginMeta, hookimpl
from kalpla_core.identity.models import Membership, User
from kalpla_core.identity.passwords import verify_password
from kalpla_core.institutions.models import Institution, InstitutionPlugin
from kalpla_core.testing.pytest_plugin import TEST_SECRET


def _plugin(name: str, commands: list[click.Command] | None = None) -> types.ModuleType:
    """A plugin module, registered through ``plugin_objects``."""
    module = types.ModuleType(f"kalpla_{name}")
    module.KALPLA_PLUGIN = PluginMeta(name=name, version="1.2.3", core_requires=">=0.1")

    @hookimpl
    def kalpla_cli_commands() -> list[click.Command]:
        return commands or []

    module.kalpla_cli_commands = kalpla_cli_commands
    return module


@click.command("count-institutions")
def count_institutions() -> None:
    """Print how many institutions there are (runs in the app context)."""
    from kalpla_core.toolkit import kalpla

    with kalpla().db.session() as session:
        click.echo(f"institutions: {session.scalar(select(func.count(Institution.id)))}")


Invoke = Callable[..., Result]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def kalpla_cli(make_app: Callable[..., Any], runner: CliRunner) -> Invoke:
    """``kalpla_cli(*args, plugins=("example",), plugin_objects=None, **config)`` runs one
    command on an app built by the harness (test database, cleaned after the test)."""

    def run(*args: str, plugins: tuple[str, ...] = ("example",),
            plugin_objects: dict[str, Any] | None = None, input: str | None = None,
            **config: Any) -> Result:
        cli = make_cli(create_app=lambda: make_app(plugins=list(plugins),
                                                   plugin_objects=plugin_objects, **config))
        return runner.invoke(cli, list(args), input=input)

    return run


@pytest.fixture
def session(make_app: Callable[..., Any]) -> Iterator[Any]:
    """A session for reading what commands wrote (apps share the test database)."""
    app = make_app(plugins=["example"])
    with app.extensions["kalpla"].db.session() as s:
        yield s


def _count(session: Any, column: Any) -> int:
    session.expire_all()
    return session.scalar(select(func.count(column)))


# --- the group, plugin commands and start-up errors -------------------------------------------

def test_help_lists_core_flask_and_plugin_commands(kalpla_cli):
    tool = _plugin("clitool", [count_institutions])
    result = kalpla_cli("--help", plugins=("example", "clitool"),
                        plugin_objects={"clitool": tool})
    assert result.exit_code == 0, result.output
    for name in ("serve", "db", "plugins", "institutions", "users", "demo", "config",
                 "worker", "routes", "shell", "count-institutions"):
        assert f"  {name} " in result.output

    result = kalpla_cli("count-institutions", plugins=("clitool",),
                        plugin_objects={"clitool": tool})
    assert result.exit_code == 0, result.output
    assert result.stdout == "institutions: 1\n"  # the default institution


def test_plugin_command_appears_only_where_the_plugin_is_loaded(kalpla_cli):
    tool = _plugin("clitool", [count_institutions])
    result = kalpla_cli("--help", plugins=("example",), plugin_objects={"clitool": tool})
    assert "count-institutions" not in result.output
    result = kalpla_cli("count-institutions", plugins=("example",),
                        plugin_objects={"clitool": tool})
    assert result.exit_code == 2
    assert "No such command 'count-institutions'" in result.output


def test_plugin_command_may_not_shadow_a_core_command(kalpla_cli):
    shadow = click.Command("db", callback=lambda: None)
    result = kalpla_cli("institutions", "list", plugins=("clash",),
                        plugin_objects={"clash": _plugin("clash", [shadow])})
    assert result.exit_code == 2
    assert result.output == ("Error: plugin 'clash' adds the command 'db', "
                             "which already exists\n")


@pytest.mark.parametrize("args", [["config", "show"], ["--help"]])
def test_configuration_error_is_one_line_and_exit_2(kalpla_cli, args):
    result = kalpla_cli(*args, storage="ftp")
    assert result.exit_code == 2
    assert result.output == "Error: KALPLA_STORAGE must be one of local, s3; got 'ftp'\n"


@pytest.mark.parametrize("args", [["plugins", "list"], ["--help"]])
def test_plugin_error_is_one_line_and_exit_2(kalpla_cli, args):
    result = kalpla_cli(*args, plugins=("nosuchplugin",))
    assert result.exit_code == 2
    assert result.output.startswith("Error: KALPLA_PLUGINS names 'nosuchplugin', which is "
                                    "not installed")
    assert result.output.count("\n") == 1
    assert "Traceback" not in result.output


def test_version(runner):
    from kalpla_core import __version__

    result = runner.invoke(make_cli(create_app=lambda: pytest.fail("app built")), ["--version"])
    assert result.output == f"kalpla {__version__}\n"


def test_flask_routes_command_works(kalpla_cli):
    result = kalpla_cli("routes")
    assert result.exit_code == 0, result.output
    assert "/healthz" in result.output
    assert "/api/v1/example/notes" in result.output


# --- plugins --------------------------------------------------------------------------------

def test_plugins_list_shows_example_with_version_hooks_and_institutions(kalpla_cli, factories):
    factories.institution("school", plugins=["example"])
    result = kalpla_cli("plugins", "list")
    assert result.exit_code == 0, result.output
    assert "example 0.1.0 (loaded)" in result.output
    assert "kalpla_settings_schema" in result.output
    assert "enabled for: school" in result.output

    result = kalpla_cli("plugins", "list", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    example = rows["example"]
    assert example["version"] == "0.1.0"
    assert example["loaded"] is True
    assert {"kalpla_blueprints", "kalpla_migrations", "kalpla_plugin_enablement_changed"} <= set(
        example["hooks"])
    assert example["enabled_institutions"] == ["school"]


def test_plugins_list_shows_installed_but_unloaded_plugins(kalpla_cli):
    result = kalpla_cli("plugins", "list", "--json", plugins=())
    example = next(r for r in json.loads(result.stdout) if r["name"] == "example")
    assert example["loaded"] is False
    assert example["version"] == "0.1.0"
    assert example["hooks"] == []


def test_plugins_enable_validates_settings_and_disable(kalpla_cli, factories, session):
    factories.institution("school")
    result = kalpla_cli("plugins", "enable", "example", "--institution", "school",
                        "--settings", '{"greeting": "Hello school", "max_note_length": 50}')
    assert result.exit_code == 0, result.output
    assert result.stdout == ("Enabled example for school "
                             "(settings: greeting, max_note_length)\n")
    row = session.scalar(select(InstitutionPlugin))
    assert (row.plugin, row.settings) == ("example", {"greeting": "Hello school",
                                                      "max_note_length": 50})
    from kalpla_example.models import ExampleNote

    # The enablement event reached the plugin once the command committed.
    assert session.scalar(select(ExampleNote.body)) == "Hello school"

    result = kalpla_cli("plugins", "disable", "example", "--institution", "school")
    assert result.exit_code == 0, result.output
    assert _count(session, InstitutionPlugin.id) == 0
    result = kalpla_cli("plugins", "disable", "example", "--institution", "school")
    assert result.exit_code == 1
    assert result.output == "Error: Plugin 'example' is not enabled for 'school'.\n"


def test_plugins_enable_with_invalid_settings_writes_nothing(kalpla_cli, factories, session):
    factories.institution("school")
    result = kalpla_cli("plugins", "enable", "example", "--institution", "school",
                        "--settings", '{"max_note_length": 0, "colour": "red"}')
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "Error: The settings of plugin 'example' are invalid."
    assert any(line.startswith("  settings.max_note_length: ") for line in lines)
    assert "  settings.colour: Unknown field." in lines
    assert _count(session, InstitutionPlugin.id) == 0
    from kalpla_example.models import ExampleNote

    assert _count(session, ExampleNote.id) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["nosuch", "--institution", "school"], "Error: Plugin 'nosuch' is not loaded.\n"),
    (["example", "--institution", "nowhere"], "Error: There is no institution 'nowhere'.\n"),
])
def test_plugins_enable_unknown_plugin_or_institution(kalpla_cli, factories, session, args,
                                                      message):
    factories.institution("school")
    result = kalpla_cli("plugins", "enable", *args)
    assert result.exit_code == 1
    assert result.output == message
    assert _count(session, InstitutionPlugin.id) == 0


@pytest.mark.parametrize("settings", ["{not json", "[1, 2]"])
def test_plugins_enable_settings_must_be_a_json_object(kalpla_cli, factories, settings):
    factories.institution("school")
    result = kalpla_cli("plugins", "enable", "example", "--institution", "school",
                        "--settings", settings)
    assert result.exit_code == 2
    assert "Invalid value for '--settings'" in result.output


# --- institutions ---------------------------------------------------------------------------

def test_institutions_create_and_list(kalpla_cli, factories, session):
    factories.institution("school", plugins=["example"])
    result = kalpla_cli("institutions", "create", "harbour-tech", "--name", "Harbour Tech")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Created institution harbour-tech (Harbour Tech)\n"
    assert session.scalar(select(Institution.name).where(
        Institution.slug == "harbour-tech")) == "Harbour Tech"

    result = kalpla_cli("institutions", "list")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "default       Default institution  (plugins: -)",
        "harbour-tech  Harbour Tech  (plugins: -)",
        "school        School  (plugins: example)",
    ]


@pytest.mark.parametrize(("slug", "message"), [
    ("school", "Error: The slug 'school' is taken.\n"),
    ("Not A Slug", "Error: The slug must be lower-case letters, digits and dashes.\n"
                   "  slug: Invalid slug.\n"),
])
def test_institutions_create_refuses_bad_or_taken_slugs(kalpla_cli, factories, session, slug,
                                                         message):
    factories.institution("school")
    result = kalpla_cli("institutions", "create", slug, "--name", "Another")
    assert result.exit_code == 1
    assert result.output == message
    assert _count(session, Institution.id) == 2  # default and school


# --- users ----------------------------------------------------------------------------------

def test_create_admin_from_options(kalpla_cli, session):
    password = "a long enough password"
    result = kalpla_cli("users", "create-admin", "--email", "Root@Example.com",
                        "--password", password, "--name", "Root")
    assert result.exit_code == 0, result.output
    user = session.scalar(select(User).where(User.email == "root@example.com"))
    assert result.stdout == f"Created platform admin root@example.com (id {user.id})\n"
    assert user.is_platform_admin and user.name == "Root"
    assert user.password_hash.startswith("$argon2id$")
    assert verify_password(user.password_hash, password)
    assert user.password_hash not in result.output
    assert password not in result.output


def test_create_admin_prompts_for_missing_options(kalpla_cli, session):
    answers = "not-an-email\nroot@example.com\nRoot Admin\nshort\n" \
              "a long enough password\na long enough password\n"
    result = kalpla_cli("users", "create-admin", input=answers)
    assert result.exit_code == 0, result.output
    assert "'not-an-email' is not an email address" in result.output
    assert "Use at least 12 characters." in result.output
    assert "Repeat for confirmation" in result.output
    assert "a long enough password" not in result.output  # hidden input is not echoed
    user = session.scalar(select(User).where(User.email == "root@example.com"))
    assert user.name == "Root Admin"
    assert verify_password(user.password_hash, "a long enough password")


def test_create_admin_refuses_an_existing_email_before_asking_a_password(kalpla_cli,
                                                                         factories, session):
    factories.user(email="taken@example.com")
    result = kalpla_cli("users", "create-admin", "--email", "TAKEN@example.com",
                        input="should not be read\n")
    assert result.exit_code == 1
    assert result.output == "Error: A user with the email taken@example.com exists already.\n"
    assert _count(session, User.id) == 1


def test_create_admin_refuses_a_short_password_option(kalpla_cli, session):
    result = kalpla_cli("users", "create-admin", "--email", "a@example.com",
                        "--password", "too-short", "--name", "A")
    assert result.exit_code == 2
    assert "Use at least 12 characters." in result.output
    assert _count(session, User.id) == 0


def test_create_admin_refuses_a_common_password(kalpla_cli, session):
    from kalpla_core.identity.policy import MIN_LENGTH, common_passwords

    common = next(p for p in sorted(common_passwords()) if len(p) >= MIN_LENGTH)
    result = kalpla_cli("users", "create-admin", "--email", "a@example.com",
                        "--password", common, "--name", "A")
    assert result.exit_code == 2
    assert common not in result.output  # the password is never echoed
    assert _count(session, User.id) == 0


# --- demo -----------------------------------------------------------------------------------

def _demo_counts(session: Any) -> dict[str, int]:
    from kalpla_example.models import ExampleNote

    from kalpla_core.courses.models import Course, Lesson
    from kalpla_core.enrollment.models import Enrollment

    return {"institutions": _count(session, Institution.id), "users": _count(session, User.id),
            "memberships": _count(session, Membership.id),
            "enabled": _count(session, InstitutionPlugin.id),
            "notes": _count(session, ExampleNote.id), "courses": _count(session, Course.id),
            "lessons": _count(session, Lesson.id), "enrollments": _count(session, Enrollment.id)}


def _demo_args(session: Any) -> list[str]:
    # The suite may itself run on PostgreSQL, where demo data needs --force.
    return ["demo", "--force"] if session.bind.dialect.name == "postgresql" else ["demo"]


def test_demo_loads_once_and_is_idempotent(kalpla_cli, session):
    result = kalpla_cli(*_demo_args(session))
    assert result.exit_code == 0, result.output
    assert f"password: {DEMO_PASSWORD}" in result.stdout
    assert "admin@example.com" in result.stdout
    first = _demo_counts(session)
    assert first == {"institutions": 3, "users": len(ACCOUNTS),
                     "memberships": sum(len(r) for a in ACCOUNTS for r in a.roles.values()),
                     "enabled": 1, "notes": 1, "courses": len(COURSES),
                     "lessons": sum(len(ls) for c in COURSES for _, ls in c.modules),
                     "enrollments": sum(len(c.students) for c in COURSES if c.publish)}
    # The one-seat course seated its first student and waitlisted the second.
    from kalpla_core.enrollment.models import Enrollment

    statuses = sorted(session.scalars(select(Enrollment.status)))
    assert statuses.count("waitlisted") == 1 and statuses.count("active") == len(statuses) - 1

    result = kalpla_cli(*_demo_args(session))
    assert result.exit_code == 0, result.output
    assert _demo_counts(session) == first

    admin = session.scalar(select(User).where(User.email == "admin@example.com"))
    assert admin.is_platform_admin
    assert verify_password(admin.password_hash, DEMO_PASSWORD)
    assert admin.password_hash not in result.output
    enabled = session.execute(select(Institution.slug, InstitutionPlugin.plugin).join(
        InstitutionPlugin, InstitutionPlugin.institution_id == Institution.id)).all()
    assert enabled == [("riverside-college", "example")]
    mentors = session.scalars(select(User.email).join(Membership).join(Institution).where(
        Institution.slug == "northwind-academy", Membership.role == "mentor")).all()
    assert mentors == ["omar.mentor@example.com"]


def test_demo_skips_plugins_that_are_not_loaded(kalpla_cli, session):
    result = kalpla_cli(*_demo_args(session), plugins=())
    assert result.exit_code == 0, result.output
    assert _count(session, InstitutionPlugin.id) == 0
    assert _count(session, Institution.id) == 3


def test_demo_refuses_postgresql_without_force(runner, kalpla_test_settings):
    url = "postgresql+psycopg://demo:demo-db-password@127.0.0.1:1/nowhere"
    apps = []

    def factory() -> Any:
        apps.append(create_app({**kalpla_test_settings, "database_url": url, "plugins": []}))
        return apps[-1]

    result = runner.invoke(make_cli(create_app=factory), ["demo"])
    for app in apps:
        app.extensions["kalpla"].db.dispose()
    assert result.exit_code == 1
    assert "KALPLA_DATABASE_URL points at PostgreSQL" in result.output
    assert "--force" in result.output


# --- config ---------------------------------------------------------------------------------

def test_config_show_redacts_secrets(kalpla_cli):
    result = kalpla_cli("config", "show", redis_url="redis://:redis-password-1@127.0.0.1:1/0")
    assert result.exit_code == 0, result.output
    assert TEST_SECRET not in result.output
    assert "redis-password-1" not in result.output
    lines = {name: value.strip() for name, _, value in
             (line.partition(" ") for line in result.stdout.splitlines())}
    assert lines["KALPLA_SECRET_KEY"] == "********"
    assert lines["KALPLA_REDIS_URL"] == "redis://:********@127.0.0.1:1/0"
    assert lines["KALPLA_PLUGINS"] == "example"

    result = kalpla_cli("config", "show", "--json")
    values = json.loads(result.stdout)
    assert values["KALPLA_SECRET_KEY"] == "********"
    assert values["KALPLA_STORAGE"] == "local"


# --- db (on a database of its own: these change the schema) ---------------------------------

@pytest.fixture
def own_db_cli(tmp_path: Path, runner: CliRunner,
               kalpla_test_settings: dict[str, Any]) -> Iterator[Invoke]:
    apps: list[Any] = []
    settings = {**kalpla_test_settings, "database_url": f"sqlite:///{tmp_path / 'own.db'}"}

    def run(*args: str, plugins: tuple[str, ...] = ("example",),
            plugin_objects: dict[str, Any] | None = None) -> Result:
        def factory() -> Any:
            config = {**settings, "plugins": list(plugins)}
            if plugin_objects:
                config["plugin_objects"] = plugin_objects
            apps.append(create_app(config))
            return apps[-1]

        return runner.invoke(make_cli(create_app=factory), list(args))

    yield run
    for app in apps:
        app.extensions["kalpla"].db.dispose()


def _ours(stdout: str) -> list[str]:
    """The lines of the core's and the example plugin's branches (other installed plugins'
    branches are listed too, whether or not loaded)."""
    return [line for line in stdout.splitlines() if line.split()[0] in ("core", "example")]


def test_db_upgrade_current_heads_downgrade(own_db_cli):
    result = own_db_cli("db", "current")
    assert result.exit_code == 0, result.output
    assert [line.split() for line in _ours(result.stdout)] == [
        ["core", "-", "(not", "applied)"], ["example", "-", "(not", "applied)"]]

    result = own_db_cli("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Upgraded to head: core, example\n"
    heads = dict(line.split() for line in _ours(own_db_cli("db", "heads").stdout))
    assert set(heads) == {"core", "example"}
    current = _ours(own_db_cli("db", "current").stdout)
    assert [line.split() for line in current] == [["core", heads["core"], "(head)"],
                                                  ["example", heads["example"], "(head)"]]
    # The first upgrade also created the default institution.
    assert "default" in own_db_cli("institutions", "list").stdout

    result = own_db_cli("db", "downgrade", "example@base")
    assert result.exit_code == 0, result.output
    assert _ours(own_db_cli("db", "current").stdout)[1].split() == [
        "example", "-", "(not", "applied)"]

    result = own_db_cli("db", "downgrade", "core@-1")
    assert result.exit_code == 0, result.output
    core_line = _ours(own_db_cli("db", "current").stdout)[0]
    assert core_line.startswith("core ") and core_line.endswith(f"(behind, head is "
                                                                f"{heads['core']})")

    result = own_db_cli("db", "upgrade", "--plugin", "example")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Upgraded to head: example\n"
    assert own_db_cli("db", "upgrade").exit_code == 0
    assert _ours(own_db_cli("db", "current").stdout) == current


@pytest.mark.parametrize(("plugins", "message"), [
    (("example",), "Error: plugin 'nosuch' is not loaded\n"),
    (("example", "nosuch"), "Error: plugin 'nosuch' has no migrations\n"),
])
def test_db_upgrade_of_a_plugin_not_loaded_or_without_migrations(own_db_cli, plugins, message):
    result = own_db_cli("db", "upgrade", "--plugin", "nosuch", plugins=plugins,
                        plugin_objects={"nosuch": _plugin("nosuch")})
    assert result.exit_code == 1
    assert result.output == message


def test_db_downgrade_to_an_unknown_branch(own_db_cli):
    assert own_db_cli("db", "upgrade").exit_code == 0
    result = own_db_cli("db", "downgrade", "nosuch@base")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: Cannot downgrade to 'nosuch@base': ")


def test_commands_on_an_unmigrated_database_say_so(own_db_cli):
    result = own_db_cli("institutions", "list")
    assert result.exit_code == 1
    assert result.output.startswith("Error: Database error: ")
    assert "kalpla db upgrade" in result.output


# --- serve ----------------------------------------------------------------------------------

def test_serve_builds_gunicorn_when_installed(app):
    pytest.importorskip("gunicorn")
    from kalpla_core.cli.gunicorn_app import GunicornServer

    server = build_server(app, "127.0.0.1", 8123, workers=3)
    assert isinstance(server, GunicornServer)
    assert server.cfg.bind == ["127.0.0.1:8123"]
    assert server.cfg.workers == 3
    assert server.load() is app
    assert build_server(app, "::1", 8123, 1).cfg.bind == ["[::1]:8123"]


def test_serve_falls_back_to_the_development_server(app, monkeypatch):
    monkeypatch.setitem(sys.modules, "gunicorn", None)  # as if it were not installed
    server = build_server(app, "localhost", 8123)
    assert isinstance(server, DevServer)
    assert (server.app, server.host, server.port) == (app, "localhost", 8123)


def test_serve_command_prints_urls_and_runs_the_server(kalpla_cli, monkeypatch):
    pytest.importorskip("gunicorn")
    from kalpla_core.cli.gunicorn_app import GunicornServer

    ran: list[GunicornServer] = []
    monkeypatch.setattr(GunicornServer, "run", lambda self: ran.append(self))
    result = kalpla_cli("serve", "--port", "8124", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "Kalpla serving on http://127.0.0.1:8124 (gunicorn, 2 workers)",
        "API docs: http://127.0.0.1:8124/api/docs",
    ]
    assert len(ran) == 1 and ran[0].cfg.bind == ["127.0.0.1:8124"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_healthz_in_a_real_process(kalpla_test_settings, tmp_path):
    port = _free_port()
    env = {**os.environ, "KALPLA_INSTANCE_PATH": str(tmp_path),
           "KALPLA_DATABASE_URL": kalpla_test_settings["database_url"],
           "KALPLA_SECRET_KEY": TEST_SECRET, "KALPLA_PLUGINS": "example",
           "KALPLA_LOG_LEVEL": "WARNING"}
    env.pop("KALPLA_CELERY_BROKER_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "kalpla_core.cli", "serve", "--port",
                             str(port), "--workers", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                            timeout=2) as r:
                    body = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.2)
        assert body == {"status": "ok"}
    finally:
        proc.terminate()
        try:
            output, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    from kalpla_core.cli.serve import gunicorn_installed

    server = "gunicorn, 1 worker" if gunicorn_installed() else "Flask development server"
    assert f"Kalpla serving on http://127.0.0.1:{port} ({server}" in output


# --- worker ---------------------------------------------------------------------------------

def test_worker_refuses_without_a_broker(kalpla_cli):
    result = kalpla_cli("worker")
    assert result.exit_code == 1
    assert result.output.startswith("Error: KALPLA_CELERY_BROKER_URL is not set")


def test_worker_starts_celery_on_the_broker(kalpla_cli, monkeypatch):
    from celery import Celery

    broker = "amqp://kalpla:broker-password-1@127.0.0.1:1//"
    started: list[tuple[Celery, list[str]]] = []
    monkeypatch.setattr(Celery, "worker_main",
                        lambda self, argv=None: started.append((self, argv)))
    result = kalpla_cli("worker", "--concurrency", "3", celery_broker_url=broker)
    assert result.exit_code == 0, result.output
    assert "broker-password-1" not in result.output
    assert result.stdout == ("Celery worker for Kalpla jobs on "
                             "amqp://kalpla:********@127.0.0.1:1//\n")
    [(celery, argv)] = started
    assert celery.conf.broker_url == broker
    assert "kalpla.run_job" in celery.tasks
    assert argv == ["worker", "--loglevel=WARNING", "--concurrency=3"]
