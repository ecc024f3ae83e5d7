"""Members of an institution (admins) and the caller's own memberships."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from kalpla_core.context import (
    current_user,
    db_session,
    kalpla,
    request_meta,
    require_permission,
)
from kalpla_core.http.api import Blueprint
from kalpla_core.http.pagination import PageArgs, page_of, page_response, paginate
from kalpla_core.http.problems import APIError
from kalpla_core.identity import members
from kalpla_core.identity.models import ROLES, User
from kalpla_core.identity.privacy_routes import personal_principal
from kalpla_core.institutions.models import Institution
from kalpla_core.institutions.schemas import InstitutionSchema
from kalpla_core.institutions.service import get_by_slug

blp = Blueprint("members", __name__, url_prefix="/api/v1",
                description="Institution members and their roles.")

_roles = fields.List(fields.String(validate=validate.OneOf(ROLES)), required=True,
                     validate=validate.Length(1, len(ROLES)),
                     metadata={"description": "Roles in the institution: " + ", ".join(ROLES)})


class MemberSchema(Schema):
    user_id = fields.String(dump_only=True)
    email = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    is_active = fields.Boolean(dump_only=True)
    roles = fields.List(fields.String(), dump_only=True)
    joined_at = fields.DateTime(dump_only=True, allow_none=True)
    invited = fields.Boolean(dump_only=True, metadata={
        "description": "True when this request created the account and mailed an invitation."})


class MemberListArgs(PageArgs):
    role = fields.String(validate=validate.OneOf(ROLES), load_default=None,
                         metadata={"description": "Only members holding this role."})


class AddMemberSchema(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=320))
    roles = _roles
    name = fields.String(load_default="", validate=validate.Length(max=200),
                         metadata={"description": "The invitee's name, for a new account."})


class RolesSchema(Schema):
    roles = _roles


class MyMembershipSchema(Schema):
    institution = fields.Nested(InstitutionSchema, dump_only=True)
    roles = fields.List(fields.String(), dump_only=True)


def _institution(slug: str) -> Institution:
    """The institution, if the caller may manage its members (401/403/404 otherwise)."""
    inst = get_by_slug(db_session(), slug)
    require_permission("members.manage", inst.id)
    return inst


def _actor() -> members.Actor:
    user = current_user()
    assert user is not None
    meta = request_meta()
    return members.Actor(user.id, ip=meta["ip"], request_id=meta["request_id"])


@blp.route("/institutions/<slug>/members")
class Members(MethodView):
    @blp.arguments(MemberListArgs, location="query")
    @blp.response(200, page_of(MemberSchema))
    @blp.doc(security=[{"bearer": []}])
    def get(self, args: dict[str, Any], slug: str) -> Any:
        """Members of the institution with their roles (``members.manage``)."""
        session = db_session()
        inst = _institution(slug)
        page = paginate(session, members.members_query(inst.id, args["role"]),
                        [(User.email, "asc"), (User.id, "asc")], args["limit"], args["cursor"])
        page.items = members.as_members(session, inst.id, page.items)
        return page_response(page)

    @blp.arguments(AddMemberSchema)
    @blp.response(201, MemberSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, data: dict[str, Any], slug: str) -> Any:
        """Add a user, found by email, with roles (``members.manage``). When nobody has this
        address, an account without a password is created and invited by mail to choose
        one (``invited`` is true in the answer)."""
        session = db_session()
        inst = _institution(slug)
        user = members.find_user_by_email(session, data["email"])
        if user is None:
            inviter = current_user()
            return members.invite(session, kalpla(), inst, data["email"], data["roles"],
                                  _actor(), name=data["name"],
                                  inviter_name=inviter.name if inviter else "")
        if not user.is_active or user.deleted_at is not None:
            raise APIError(409, "This account is disabled.", "account-disabled")
        return members.add_member(session, inst, user, data["roles"], _actor())


@blp.route("/institutions/<slug>/members/<user_id>")
class MemberItem(MethodView):
    @blp.response(200, MemberSchema)
    @blp.doc(security=[{"bearer": []}])
    def get(self, slug: str, user_id: str) -> Any:
        """One member (``members.manage``)."""
        inst = _institution(slug)
        return members.get_member(db_session(), inst.id, user_id)

    @blp.arguments(RolesSchema)
    @blp.response(200, MemberSchema)
    @blp.doc(security=[{"bearer": []}])
    def patch(self, data: dict[str, Any], slug: str, user_id: str) -> Any:
        """Replace the member's roles (``members.manage``); the last admin stays admin."""
        inst = _institution(slug)
        return members.set_roles(db_session(), inst, user_id, data["roles"], _actor())

    @blp.response(204)
    @blp.doc(security=[{"bearer": []}])
    def delete(self, slug: str, user_id: str) -> Any:
        """Remove the member from the institution (``members.manage``); never the last admin."""
        inst = _institution(slug)
        members.remove_member(db_session(), inst, user_id, _actor())
        return None


@blp.route("/me/memberships")
class MyMemberships(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(MyMembershipSchema))
    @blp.doc(security=[{"bearer": []}])
    def get(self, args: dict[str, Any]) -> Any:
        """The institutions where the caller holds roles, with those roles."""
        user = personal_principal().user
        session = db_session()
        page = paginate(session, members.my_memberships_query(user.id),
                        [(Institution.slug, "asc"), (Institution.id, "asc")],
                        args["limit"], args["cursor"])
        page.items = members.summaries(session, user.id, page.items)
        return page_response(page)
