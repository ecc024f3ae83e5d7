"""The settings an institution holds for the core, validated when they are written.

Read by the services that apply them (each falls back to its default when a key is absent):
- ``require_mfa_for_roles``: roles whose members must use a second factor to log in
  (:mod:`kalpla_core.identity.mfa`); default none.
- ``video_completion_percent``: the share of a video to watch for the lesson to count as
  completed (:mod:`kalpla_core.enrollment.progress`); default 90.
- ``waitlist_offer_hours``: how long a seat offered to a waitlisted student is held
  (:mod:`kalpla_core.enrollment.waitlist`); default 48.

Plugins keep their own settings per institution (``kalpla_settings_schema``), not here.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from kalpla_core.identity.models import ROLES


class InstitutionSettingsSchema(Schema):
    """Unknown keys are refused, so a misspelt setting is an error rather than ignored."""

    class Meta:
        unknown = RAISE

    require_mfa_for_roles = fields.List(fields.String(validate=validate.OneOf(ROLES)),
                                        validate=validate.Length(max=len(ROLES)))
    video_completion_percent = fields.Integer(strict=True, validate=validate.Range(1, 100))
    waitlist_offer_hours = fields.Integer(strict=True, validate=validate.Range(1, 24 * 30))
