"""The ``@idempotent`` route decorator: honours an ``Idempotency-Key`` header on a write.

Put it above the flask-smorest decorators of a view method::

    @blp.route("/orders")
    class Orders(MethodView):
        @idempotent
        @blp.arguments(OrderSchema)
        @blp.response(201, OrderSchema)
        def post(self, data): ...

Without the header, or for an anonymous caller, the view runs as usual. With it, see
:mod:`kalpla_core.idempotency.service`: a repeated request is answered with the stored
response (marked ``Idempotent-Replayed: true``) and the view does not run again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import after_this_request, current_app, request
from flask_smorest import Blueprint

from kalpla_core.context import current_principal, db_session
from kalpla_core.db import utcnow
from kalpla_core.idempotency import service

F = TypeVar("F", bound=Callable[..., Any])

REPLAYED_HEADER = "Idempotent-Replayed"
PARAMETER = {
    "in": "header", "name": service.HEADER, "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    "description": "A unique value per intended operation (a UUID, say). Sending the request "
                   "again with the same key and body answers the first response again instead "
                   "of repeating the operation; the same key with another body is a 422. Keys "
                   "belong to the caller and are kept 24 hours.",
}


def _owner() -> str | None:
    principal = current_principal(required=False)
    if principal is None:
        return None
    if principal.method == "api_key" and principal.credential_id:
        return f"key:{principal.credential_id}"
    return f"user:{principal.user.id}"


def idempotent(view: F) -> F:
    """Honour ``Idempotency-Key`` on this view (and document the header)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = request.headers.get(service.HEADER)
        owner = _owner() if key is not None else None
        if key is None or owner is None:
            return view(*args, **kwargs)
        service.check_key(key)
        digest = service.fingerprint(request.method, request.path,
                                     request.content_type or "", request.get_data())
        claimed = service.claim(db_session(), owner, f"{request.method} {request.path}"[:200],
                                key, digest, utcnow())
        if isinstance(claimed, service.StoredResponse):
            response = current_app.response_class(claimed.body, status=claimed.status,
                                                  headers=claimed.headers)
            response.headers[REPLAYED_HEADER] = "true"
            return response
        result = view(*args, **kwargs)

        # Registered after the view ran, so it sees the headers the view's own callbacks
        # add (ETag, Link); the unit of work commits the stored answer with the work.
        @after_this_request
        def _store(response: Any) -> Any:
            if response.status_code < 400:
                service.record(claimed, response.status_code, response.get_data(as_text=True),
                               dict(response.headers))
            return response

        return result

    return Blueprint.doc(parameters=[PARAMETER])(wrapper)  # type: ignore[no-any-return]
