"""Provider keys and webhook secrets of an institution, sealed with SecretBox.

They are kept in the plugin's own table rather than in the plugin settings, because the core
returns settings to admins and hands them to event handlers: a secret must never be read back.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from kalpla_core.toolkit import SecretBox
from kalpla_payments.models import Credentials


def _box(kalpla: Any, institution_id: str, provider: str) -> SecretBox:
    # One purpose per institution and provider: a sealed blob moved elsewhere will not open.
    return SecretBox(kalpla.settings.secret_key,
                     f"payments-credentials:{institution_id}:{provider}")


def load(session: Session, kalpla: Any, institution_id: str, provider: str) -> dict[str, str]:
    row = session.get(Credentials, (institution_id, provider))
    if row is None:
        return {}
    data: dict[str, str] = json.loads(_box(kalpla, institution_id, provider).decrypt(row.sealed))
    return data


def store(session: Session, kalpla: Any, institution_id: str, provider: str,
          values: dict[str, Any]) -> list[str]:
    """Merge ``values`` into the stored fields (an empty string removes one); the names of the
    fields now set."""
    current = load(session, kalpla, institution_id, provider)
    for key, value in values.items():
        if value in ("", None):
            current.pop(key, None)
        else:
            current[key] = str(value)
    sealed = _box(kalpla, institution_id, provider).encrypt(json.dumps(current).encode())
    row = session.get(Credentials, (institution_id, provider))
    if row is None:
        session.add(Credentials(institution_id=institution_id, provider=provider, sealed=sealed))
    else:
        row.sealed = sealed
    session.flush()
    return sorted(current)
