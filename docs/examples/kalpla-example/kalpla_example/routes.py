from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate
from sqlalchemy import select

from kalpla_core.toolkit import (
    APIError,
    Blueprint,
    PageArgs,
    current_institution,
    current_user,
    db_session,
    page_of,
    page_response,
    paginate,
    plugin_settings,
    require_permission,
)
from kalpla_example.models import ExampleNote

# Mounted by the core at /api/v1/example/ and answering 404 where the plugin is disabled.
blp = Blueprint("example", __name__, description="Example plugin: institution notes.")


class NoteSchema(Schema):
    id = fields.Integer(dump_only=True)
    title = fields.String(load_default="", validate=validate.Length(max=200))
    body = fields.String(required=True, validate=validate.Length(min=1))
    author_id = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)


@blp.route("/notes")
class Notes(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(NoteSchema))
    @blp.doc(security=[{"bearer": []}])
    def get(self, args: dict[str, Any]) -> Any:
        """Notes of the institution, newest first (any signed-in user)."""
        current_user()
        stmt = select(ExampleNote).where(ExampleNote.institution_id == current_institution().id)
        return page_response(paginate(db_session(), stmt, [(ExampleNote.id, "desc")],
                                      args["limit"], args["cursor"]))

    @blp.arguments(NoteSchema)
    @blp.response(201, NoteSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, data: dict[str, Any]) -> Any:
        """Write a note (permission ``example.write_notes``)."""
        inst = current_institution()
        user = require_permission("example.write_notes", inst.id)
        limit = (plugin_settings("example") or {}).get("max_note_length", 2000)
        if len(data["body"]) > limit:
            raise APIError(422, f"A note is at most {limit} characters here.", "validation",
                           errors={"body": [f"Longer than {limit} characters."]})
        note = ExampleNote(institution_id=inst.id, author_id=user.id, **data)
        session = db_session()
        session.add(note)
        session.flush()
        return note
