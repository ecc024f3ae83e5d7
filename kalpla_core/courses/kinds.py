"""Lesson kinds: the core's own and those plugins contribute through ``kalpla_lesson_kinds``."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError

from kalpla_core.contract import LessonKind
from kalpla_core.courses.models import CORE_LESSON_KINDS


class LessonKindRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, tuple[str, LessonKind]] = {
            name: ("core", LessonKind(name, name.title())) for name in CORE_LESSON_KINDS}

    def register(self, plugin: str, kind: LessonKind) -> None:
        if kind.name in self._kinds:
            owner = self._kinds[kind.name][0]
            raise ValueError(f"lesson kind {kind.name!r} of plugin {plugin!r} is already "
                             f"registered by {owner!r}")
        self._kinds[kind.name] = (plugin, kind)

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def owner(self, name: str) -> str | None:
        entry = self._kinds.get(name)
        return entry[0] if entry else None

    def is_core(self, name: str) -> bool:
        return self.owner(name) == "core"

    def validate_data(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """The lesson's ``data`` validated by its kind's schema (ValidationError if not)."""
        entry = self._kinds.get(name)
        if entry is None:
            raise ValidationError({"kind": [f"Unknown lesson kind {name!r}."]})
        schema_cls = entry[1].data_schema
        if schema_cls is None:
            if data:
                raise ValidationError({"data": ["This lesson kind takes no data."]})
            return {}
        schema: Schema = schema_cls() if isinstance(schema_cls, type) else schema_cls
        try:
            return schema.dump(schema.load(data))
        except ValidationError as exc:
            raise ValidationError({"data": exc.messages}) from None

    def describe(self) -> list[dict[str, str]]:
        return [{"name": n, "plugin": p, "label": k.label, "description": k.description}
                for n, (p, k) in sorted(self._kinds.items())]
