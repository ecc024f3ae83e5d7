from __future__ import annotations

from typing import Any

from flask import Blueprint as FlaskBlueprint
from flask.views import MethodView

from kalpla_core.context import current_user, db_session, kalpla
from kalpla_core.http.api import Blueprint
from kalpla_core.identity.schemas import UserSchema

blp = Blueprint("identity", __name__, url_prefix="/api/v1",
                description="The caller's account.")

wellknown = FlaskBlueprint("wellknown", __name__)


@wellknown.get("/.well-known/jwks.json")
def jwks() -> Any:
    """Public keys that verify Kalpla access tokens (current and recently retired)."""
    body = kalpla().keys.jwks(db_session())
    return body, 200, {"Cache-Control": "public, max-age=300"}


@blp.route("/me")
class Me(MethodView):
    @blp.response(200, UserSchema)
    @blp.doc(security=[{"bearer": []}])
    def get(self) -> Any:
        """The authenticated user, with an `ETag` for `If-Match` on `PATCH /me`."""
        from kalpla_core.http.etag import conditional_get
        from kalpla_core.identity.me_routes import profile_etag

        user = current_user()
        assert user is not None
        conditional_get(profile_etag(user))
        return user
