"""Imports every core model, so the metadata (migrations, plugin checks) sees all tables."""

from kalpla_core.audit.models import AuditEvent
from kalpla_core.identity.models import (
    APIKey,
    EmailToken,
    LoginThrottle,
    Membership,
    RecoveryCode,
    RefreshToken,
    SigningKey,
    TOTPDevice,
    User,
    UserIdentity,
)
from kalpla_core.institutions.models import Institution, InstitutionPlugin
from kalpla_core.jobs.models import Job
from kalpla_core.mail.models import OutboxMessage

__all__ = [
    "APIKey", "AuditEvent", "EmailToken", "Institution", "InstitutionPlugin", "Job",
    "LoginThrottle", "Membership", "OutboxMessage", "RecoveryCode", "RefreshToken",
    "SigningKey", "TOTPDevice", "User", "UserIdentity",
]
