"""The documentation keeps up with the code: every hook of the plugin contract has its section
in docs/plugins.md (and nothing else calls itself a hook there), every hook has exactly one
kind, and every KALPLA_* setting the configuration reads is in the README's table."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from kalpla_core import config, hookspecs

ROOT = Path(__file__).resolve().parent.parent
PLUGINS_MD = ROOT / "docs" / "plugins.md"
README = ROOT / "README.md"
CONFIGURATION_MD = ROOT / "docs" / "configuration.md"

KINDS = {
    "registration": hookspecs.REGISTRATION_HOOKS,
    "gate": hookspecs.GATE_HOOKS,
    "event": hookspecs.EVENT_HOOKS,
    "data": hookspecs.DATA_HOOKS,
}
SETTING_RE = re.compile(r"KALPLA_[A-Z][A-Z0-9_]*[A-Z0-9]")


def defined_hooks() -> dict[str, object]:
    """Every function of hookspecs.py carrying the ``hookspec`` marker, by name."""
    marker = f"{hookspecs.hookspec.project_name}_spec"
    return {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(fn, marker)}


def hook_sections(markdown: str) -> dict[str, str]:
    """``### kalpla_…`` sections of a Markdown text: heading name -> body up to the next
    heading of level 1 to 3."""
    sections: dict[str, str] = {}
    matches = list(re.finditer(r"^(#{1,3}) (.+?)\s*$", markdown, re.MULTILINE))
    for i, m in enumerate(matches):
        heading = m.group(2).strip().strip("`")
        if m.group(1) != "###" or not heading.startswith("kalpla_"):
            continue
        if heading in sections:
            raise AssertionError(f"docs/plugins.md has two sections named {heading}")
        end = matches[i + 1].start() if i + 1 < len(matches) else len(markdown)
        sections[heading] = markdown[m.end():end]
    return sections


def table_settings(markdown: str, heading: str) -> set[str]:
    """Variables in the first column of the table under ``heading``."""
    m = re.search(rf"^#+ {re.escape(heading)}\s*$(.*?)(?=^#+ |\Z)", markdown,
                  re.MULTILINE | re.DOTALL)
    assert m, f"no section {heading!r}"
    names: set[str] = set()
    for line in m.group(1).splitlines():
        if line.startswith("|"):
            first = line.strip("|").split("|")[0]
            names.update(SETTING_RE.findall(first))
    return names


def config_settings() -> set[str]:
    return set(SETTING_RE.findall(Path(config.__file__).read_text()))


def test_introspection_finds_the_contract():
    hooks = defined_hooks()
    # Sanity of the introspection itself: a marked hook is found, an unmarked helper is not.
    assert "kalpla_blueprints" in hooks
    assert "kalpla_user_export" in hooks
    assert all(name.startswith("kalpla_") for name in hooks)
    assert len(config_settings()) > 5


def test_every_hook_is_documented():
    sections = hook_sections(PLUGINS_MD.read_text())
    missing = sorted(set(defined_hooks()) - set(sections))
    assert not missing, f"hooks without a '### <name>' section in docs/plugins.md: {missing}"


def test_docs_document_no_unknown_hook():
    sections = hook_sections(PLUGINS_MD.read_text())
    unknown = sorted(set(sections) - set(defined_hooks()))
    assert not unknown, f"docs/plugins.md documents hooks hookspecs.py lacks: {unknown}"


def test_every_hook_has_exactly_one_kind():
    hooks = set(defined_hooks())
    for name in sorted(hooks):
        kinds = [kind for kind, members in KINDS.items() if name in members]
        assert len(kinds) == 1, f"{name} is listed in {kinds or 'no'} kind tuple(s)"
    listed = {name for members in KINDS.values() for name in members}
    assert not listed - hooks, f"kind tuples name hooks that do not exist: {listed - hooks}"


@pytest.mark.parametrize("name", sorted(defined_hooks()))
def test_hook_section_states_kind_and_arguments(name):
    body = hook_sections(PLUGINS_MD.read_text()).get(name)
    if body is None:
        pytest.fail(f"{name} has no section (see test_every_hook_is_documented)")
    (kind,) = [k for k, members in KINDS.items() if name in members]
    m = re.search(r"\*\*Kind:\*\*\s*(\w+)", body)
    assert m, f"the section of {name} has no '**Kind:** …' line"
    assert m.group(1) == kind, f"{name} is documented as {m.group(1)}, hookspecs.py says {kind}"
    for param in inspect.signature(defined_hooks()[name]).parameters:
        assert f"`{param}`" in body, f"the section of {name} does not describe `{param}`"


@pytest.mark.parametrize("path", [README, CONFIGURATION_MD], ids=lambda p: p.name)
def test_every_setting_is_in_the_configuration_table(path):
    documented = table_settings(path.read_text(), "Configuration")
    read = config_settings()
    missing = sorted(read - documented)
    assert not missing, f"{path.name}'s configuration table lacks {missing}"
    unknown = sorted(documented - read)
    assert not unknown, f"{path.name}'s configuration table names settings config.py " \
                        f"does not read: {unknown}"
