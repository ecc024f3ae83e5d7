"""The plugin contract: loading checks, call order, per-institution gates and events."""

from __future__ import annotations

import logging
import types
from typing import Any

import pytest
from sqlalchemy import ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from kalpla_core.contract import (
    Decision,
    EnrollmentRequest,
    PluginEnablementChanged,
    PluginMeta,
    UserRegistered,
)
from kalpla_core.db import Base
from kalpla_core.hookspecs import hookimpl
from kalpla_core.http.api import Blueprint
from kalpla_core.plugins import PluginError


def make_plugin(name: str, calls: list[str] | None = None, *, decision: Decision | None = None,
                fail_events: bool = False, **meta: Any) -> types.SimpleNamespace:
    """A plugin module built in the test: records the hooks it sees in ``calls``."""
    calls = calls if calls is not None else []
    ns = types.SimpleNamespace(calls=calls)
    ns.KALPLA_PLUGIN = PluginMeta(name=name, version=meta.pop("version", "1.0"),
                                  core_requires=meta.pop("core_requires", ">=0.1"), **meta)

    @hookimpl
    def kalpla_enrollment_requested(session, request):
        calls.append(f"{name}:gate")
        return decision

    @hookimpl
    def kalpla_user_registered(event):
        calls.append(f"{name}:event:{event.user_id}")
        if fail_events:
            raise RuntimeError(f"{name} handler broke")

    @hookimpl
    def kalpla_startup(app):
        calls.append(f"{name}:startup")

    ns.kalpla_enrollment_requested = kalpla_enrollment_requested
    ns.kalpla_user_registered = kalpla_user_registered
    ns.kalpla_startup = kalpla_startup
    return ns


def event_for(institution_id: str | None, user_id: str = "u1") -> UserRegistered:
    return UserRegistered(institution_id=institution_id, occurred_at="2026-01-01T00:00:00+00:00",
                          user_id=user_id, email="a@example.test")


# --- loading ----------------------------------------------------------------------------------

def test_not_installed_plugin_stops_startup(make_app):
    with pytest.raises(PluginError, match="'nope', which is not installed"):
        make_app(plugins=["nope"])


def test_incompatible_core_version_stops_startup(make_app):
    old = make_plugin("old", core_requires=">=2.0")
    with pytest.raises(PluginError, match=r"'old' 1.0 supports kalpla >=2.0; this is kalpla"):
        make_app(plugins=["old"], plugin_objects={"old": old})


def test_missing_required_plugin_stops_startup(make_app):
    needy = make_plugin("needy", requires=("payments",))
    with pytest.raises(PluginError, match="requires 'payments', which is not loaded"):
        make_app(plugins=["needy"], plugin_objects={"needy": needy})
    # Loaded together, it starts.
    base = make_plugin("payments")
    make_app(plugins=["payments", "needy"], plugin_objects={"needy": needy, "payments": base})


@pytest.mark.parametrize(("name", "message"), [
    ("courses", "reserved by the core"),
    ("Bad-Name", "must be lower-case"),
])
def test_bad_plugin_names(make_app, name, message):
    with pytest.raises(PluginError, match=message):
        make_app(plugins=[name], plugin_objects={name: make_plugin(name)})


def test_metadata_is_required_and_must_match(make_app):
    with pytest.raises(PluginError, match="no KALPLA_PLUGIN"):
        make_app(plugins=["bare"], plugin_objects={"bare": types.SimpleNamespace()})
    with pytest.raises(PluginError, match="calls itself 'other'"):
        make_app(plugins=["liar"], plugin_objects={"liar": make_plugin("other")})


def test_wrong_hook_signature_is_refused(make_app):
    bad = make_plugin("bad")

    @hookimpl
    def kalpla_user_registered(event, extra_argument):
        pass

    bad.kalpla_user_registered = kalpla_user_registered
    with pytest.raises(PluginError, match="implements a hook wrongly"):
        make_app(plugins=["bad"], plugin_objects={"bad": bad})


def test_plugin_tables_are_checked(make_app):
    # Defined here and removed afterwards: they must not stay on the shared metadata, which
    # the models-versus-migrations test compares.
    class WrongTable(Base):
        __tablename__ = "notprefixed_things"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)

    class ForeignRef(Base):
        __tablename__ = "tables_refs"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        other: Mapped[int] = mapped_column(ForeignKey("notprefixed_things.id"))

    try:
        p = make_plugin("tables")
        p.kalpla_models = hookimpl(lambda: [WrongTable])
        with pytest.raises(PluginError, match="must be named 'tables_…'"):
            make_app(plugins=["tables"], plugin_objects={"tables": p})
        p.kalpla_models = hookimpl(lambda: [ForeignRef])
        with pytest.raises(PluginError, match="foreign key to 'notprefixed_things'"):
            make_app(plugins=["tables"], plugin_objects={"tables": p})
    finally:
        Base.metadata.remove(ForeignRef.__table__)
        Base.metadata.remove(WrongTable.__table__)


def test_plugin_cannot_take_a_core_blueprint_name(make_app):
    p = make_plugin("structure")
    p.kalpla_blueprints = hookimpl(lambda: [Blueprint("structure", __name__)])
    with pytest.raises(PluginError, match="'structure' is already taken"):
        make_app(plugins=["structure"], plugin_objects={"structure": p})


def test_blueprint_and_permission_names_are_checked(make_app):
    p = make_plugin("named")
    p.kalpla_blueprints = hookimpl(lambda: [Blueprint("elsewhere", __name__)])
    with pytest.raises(PluginError, match="blueprint 'elsewhere' must be named"):
        make_app(plugins=["named"], plugin_objects={"named": p})
    from kalpla_core.contract import Permission

    q = make_plugin("perms")
    q.kalpla_permissions = hookimpl(lambda: [Permission("courses.hijack", "no")])
    with pytest.raises(PluginError, match=r"must start with 'perms\.'"):
        make_app(plugins=["perms"], plugin_objects={"perms": q})


def test_each_app_has_its_own_plugins(make_app):
    calls: list[str] = []
    with_plugin = make_app(plugins=["solo"], plugin_objects={"solo": make_plugin("solo", calls)})
    without = make_app(plugins=[])
    assert with_plugin.extensions["kalpla"].plugins.names == ["solo"]
    assert without.extensions["kalpla"].plugins.names == []
    assert calls == ["solo:startup"]


# --- order ------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [["alpha", "beta"], ["beta", "alpha"]])
def test_hooks_run_in_configured_order(make_app, factories, order):
    calls: list[str] = []
    plugins = {n: make_plugin(n, calls) for n in ("alpha", "beta")}
    app = make_app(plugins=order, plugin_objects=plugins)
    assert calls == [f"{n}:startup" for n in order]
    kalpla = app.extensions["kalpla"]
    kalpla.deliver("kalpla_user_registered", event_for(None))
    assert calls[2:] == [f"{n}:event:u1" for n in order]


# --- gates ------------------------------------------------------------------------------------

def gate_request(inst_id: str) -> EnrollmentRequest:
    return EnrollmentRequest(institution_id=inst_id, course_id="c1", user_id="u1",
                             requested_by="u1")


def gate_app(make_app, decisions: dict[str, Decision | None], calls: list[str]):
    plugins = {n: make_plugin(n, calls, decision=d) for n, d in decisions.items()}
    return make_app(plugins=list(plugins), plugin_objects=plugins)


def run_gate(app, inst) -> Decision:
    kalpla = app.extensions["kalpla"]
    with kalpla.db.session() as s:
        enabled = kalpla.enabled_plugins(s, inst.id)
        return kalpla.plugins.gate("kalpla_enrollment_requested", enabled, session=s,
                                   request=gate_request(inst.id))


def test_gate_deny_wins_and_names_the_plugin(make_app):
    calls: list[str] = []
    app = gate_app(make_app, {
        "payer": Decision.pending("Pay first", {"type": "checkout", "url": "https://pay"}),
        "blocker": Decision.deny("Prerequisite missing", "prerequisite"),
        "neutral": None,
    }, calls)
    from kalpla_core.testing import Factories

    f = Factories(app)
    inst = f.institution("gated", plugins=["payer", "blocker", "neutral"])
    decision = run_gate(app, inst)
    assert (decision.outcome, decision.code, decision.plugin) == ("deny", "prerequisite",
                                                                 "blocker")


def test_gate_pending_holds_with_action_and_disabled_plugins_are_not_asked(make_app):
    calls: list[str] = []
    app = gate_app(make_app, {
        "payer": Decision.pending("Pay first", {"type": "checkout", "url": "https://pay"}),
        "blocker": Decision.deny("No"),
    }, calls)
    from kalpla_core.testing import Factories

    f = Factories(app)
    inst = f.institution("paying", plugins=["payer"])
    calls.clear()
    decision = run_gate(app, inst)
    assert decision.outcome == "pending" and decision.action["type"] == "checkout"
    assert calls == ["payer:gate"]  # 'blocker' is loaded but not enabled here
    free = f.institution("free")
    assert run_gate(app, free).outcome == "allow"


def test_gate_answer_must_be_a_decision(make_app):
    calls: list[str] = []
    app = gate_app(make_app, {"sloppy": "yes"}, calls)  # type: ignore[dict-item]
    from kalpla_core.testing import Factories

    inst = Factories(app).institution("s", plugins=["sloppy"])
    with pytest.raises(PluginError, match="not a Decision"):
        run_gate(app, inst)


# --- events -----------------------------------------------------------------------------------

def test_events_reach_only_enabled_plugins_and_failures_are_isolated(make_app, caplog):
    calls: list[str] = []
    plugins = {"broken": make_plugin("broken", calls, fail_events=True),
               "steady": make_plugin("steady", calls),
               "absent": make_plugin("absent", calls)}
    app = make_app(plugins=list(plugins), plugin_objects=plugins)
    from kalpla_core.testing import Factories

    inst = Factories(app).institution("ev", plugins=["broken", "steady"])
    calls.clear()
    kalpla = app.extensions["kalpla"]
    with caplog.at_level(logging.ERROR):
        kalpla.deliver("kalpla_user_registered", event_for(inst.id))
    assert calls == ["broken:event:u1", "steady:event:u1"]
    failure = [r for r in caplog.records if r.getMessage() == "event handler failed"]
    assert failure and failure[0].plugin == "broken"
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'kalpla_event_handler_failures_total{event="kalpla.identity.user.registered.v1",' \
           'plugin="broken"} 1.0' in metrics


def test_events_are_delivered_after_commit_only(make_app):
    calls: list[str] = []
    plugins = {"listener": make_plugin("listener", calls)}
    app = make_app(plugins=["listener"], plugin_objects=plugins)
    from kalpla_core.testing import Factories

    inst = Factories(app).institution("tx", plugins=["listener"])
    calls.clear()
    kalpla = app.extensions["kalpla"]
    with pytest.raises(RuntimeError), kalpla.db.session() as s:
        kalpla.emit(s, "kalpla_user_registered", event_for(inst.id, "rolled-back"))
        raise RuntimeError("abort the unit of work")
    assert calls == []
    with kalpla.db.session() as s:
        kalpla.emit(s, "kalpla_user_registered", event_for(inst.id, "committed"))
        assert calls == []  # not before the commit
    assert calls == ["listener:event:committed"]


# --- enablement over HTTP ---------------------------------------------------------------------

@pytest.mark.plugins("example")
def test_enablement_api_permissions(client, factories):
    inst = factories.institution("perm-school")
    other = factories.institution("other-school")
    admin = factories.user(roles={inst: ["admin"]})
    other_admin = factories.user(roles={other: ["admin"]})
    student = factories.user(roles={inst: ["student"]})
    url = "/api/v1/institutions/perm-school/plugins/example"

    assert client.put(url, json={}).status_code == 401
    assert client.put(url, json={}, headers=factories.auth(student)).status_code == 403
    assert client.put(url, json={}, headers=factories.auth(other_admin)).status_code == 403
    r = client.put(url, json={"settings": {"greeting": "Hello"}}, headers=factories.auth(admin))
    assert r.status_code == 200
    assert r.json["settings"] == {"greeting": "Hello", "max_note_length": 2000}
    r = client.put("/api/v1/institutions/perm-school/plugins/unknown", json={},
                   headers=factories.auth(admin))
    assert r.status_code == 404

    listing = client.get("/api/v1/institutions/perm-school/plugins",
                         headers=factories.auth(admin)).json
    assert [p["plugin"] for p in listing] == ["example"]
    assert client.delete(url, headers=factories.auth(student)).status_code == 403
    assert client.delete(url, headers=factories.auth(admin)).status_code == 204
    assert client.delete(url, headers=factories.auth(admin)).status_code == 404


@pytest.mark.plugins("example")
def test_plugins_listing(client, factories):
    factories.institution("listed", plugins=["example"])
    anonymous = {p["name"]: p for p in client.get("/api/v1/plugins").json}
    example = anonymous["example"]
    assert example["loaded"] and example["version"] == "0.1.0"
    assert "kalpla_blueprints" in example["hooks"]
    assert "kalpla_plugin_enablement_changed" in example["hooks"]
    assert example["enabled_institutions"] is None
    root = factories.user(platform_admin=True)
    as_root = {p["name"]: p for p in client.get("/api/v1/plugins",
                                                headers=factories.auth(root)).json}
    assert as_root["example"]["enabled_institutions"] == ["listed"]


def test_installed_but_not_loaded_plugin_is_listed(make_app):
    client = make_app(plugins=[]).test_client()
    example = {p["name"]: p for p in client.get("/api/v1/plugins").json}["example"]
    assert example["loaded"] is False and example["version"] == "0.1.0"
    # Its routes are not mounted at all.
    assert client.get("/api/v1/example/notes").status_code == 404


def test_disabled_plugin_hears_that_it_was_disabled(make_app):
    calls: list[str] = []
    p = make_plugin("watcher", calls)

    @hookimpl
    def kalpla_plugin_enablement_changed(event: PluginEnablementChanged) -> None:
        calls.append(f"{event.plugin}:{event.enabled}")

    p.kalpla_plugin_enablement_changed = kalpla_plugin_enablement_changed
    app = make_app(plugins=["watcher"], plugin_objects={"watcher": p})
    from kalpla_core.institutions.service import disable_plugin
    from kalpla_core.testing import Factories

    inst = Factories(app).institution("w", plugins=["watcher"])
    kalpla = app.extensions["kalpla"]
    with kalpla.db.session() as s:
        disable_plugin(s, kalpla, s.merge(inst), "watcher")
    assert calls[-2:] == ["watcher:True", "watcher:False"]
