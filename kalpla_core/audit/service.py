"""Writing security events. Callers pass plain values; nothing secret belongs in ``data``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from kalpla_core.audit.models import AuditEvent

# Keys that must never reach the audit log, whatever a caller passes.
_FORBIDDEN_KEYS = {"password", "token", "secret", "code", "refresh_token", "access_token",
                   "key", "api_key", "recovery_code"}


def record(session: Session, action: str, *, actor_id: str | None = None,
           institution_id: str | None = None, target_type: str = "", target_id: str = "",
           ip: str = "", request_id: str = "", **data: Any) -> AuditEvent:
    """Append one event (``login.succeeded``, ``mfa.enabled``, ``member.role_changed`` …) to
    the caller's unit of work."""
    leaked = _FORBIDDEN_KEYS & set(data)
    if leaked:
        raise ValueError(f"audit data must not carry secrets: {sorted(leaked)}")
    event = AuditEvent(action=action, actor_id=actor_id, institution_id=institution_id,
                       target_type=target_type, target_id=str(target_id), ip=ip[:64],
                       request_id=request_id[:128], data=data)
    session.add(event)
    return event

