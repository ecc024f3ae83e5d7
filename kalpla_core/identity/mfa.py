"""TOTP second factor with single-use recovery codes. No Flask here.

- The TOTP secret is encrypted at rest (:class:`kalpla_core.crypto.SecretBox`); it is shown
  once, at enrolment, and is usable only after a first correct code confirms it.
- A code is accepted for the current 30-second step or one either side, and never for a step
  at or before the last one accepted: a code cannot be replayed.
- Ten recovery codes (50 random bits each) are shown once, stored as HMACs under a key derived
  from the deployment secret, and each works once.
- With TOTP on, a correct password earns a short-lived *challenge* token (``typ`` ``mfa``),
  not an access token; ``complete_login`` trades it and a code for a session. Wrong codes
  count towards the account's lockout.
- An institution may require MFA for some roles (its settings key ``require_mfa_for_roles``,
  e.g. ``["admin", "mentor"]``). A member holding such a role without TOTP gets, instead of
  tokens, an *enrolment* token (``typ`` ``mfa_enrolment``) that the TOTP enrolment endpoints
  alone accept; confirming enrolment with it starts the session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyotp
import segno
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from kalpla_core.audit.service import record
from kalpla_core.crypto import SecretBox, derive_key
from kalpla_core.db import utcnow
from kalpla_core.http.problems import APIError
from kalpla_core.identity import throttle
from kalpla_core.identity.models import Membership, RecoveryCode, TOTPDevice, User
from kalpla_core.identity.sessions import Client, TokenPair, can_authenticate, start_session
from kalpla_core.identity.tokens import TokenError
from kalpla_core.institutions.models import Institution
from kalpla_core.mail.service import send_mail

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

ISSUER = "Kalpla"
CHALLENGE_TYP = "mfa"
ENROLMENT_TYP = "mfa_enrolment"
CHALLENGE_TTL = 300
ENROLMENT_TTL = 900
RECOVERY_CODE_COUNT = 10
POLICY_KEY = "require_mfa_for_roles"
_RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32: no i, l, o, u


@dataclass(frozen=True)
class MFAChallenge:
    mfa_token: str
    expires_in: int
    mfa_required: bool = True


@dataclass(frozen=True)
class EnrolmentChallenge:
    mfa_enrolment_token: str
    expires_in: int
    mfa_enrolment_required: bool = True


@dataclass(frozen=True)
class TOTPEnrolment:
    secret: str
    otpauth_uri: str
    qr_svg: str


@dataclass(frozen=True)
class MFAStatus:
    totp_enabled: bool
    recovery_codes_left: int
    required: bool


def _box(kalpla: Kalpla) -> SecretBox:
    return SecretBox(kalpla.settings.secret_key, "totp-secrets")


def _audit(session: Session, action: str, user: User, client: Client, **data: Any) -> None:
    record(session, action, actor_id=user.id, target_type="user", target_id=user.id,
           ip=client.ip, request_id=client.request_id, **data)


def _mail(session: Session, kalpla: Kalpla, user: User, template: str) -> None:
    send_mail(session, kalpla, user.email, template, name=user.name, email=user.email,
              when=utcnow().strftime("%Y-%m-%d %H:%M"))


# --- state and policy ----------------------------------------------------------------------

def totp_enabled(session: Session, user_id: str) -> bool:
    return session.scalar(select(TOTPDevice.user_id).where(
        TOTPDevice.user_id == user_id, TOTPDevice.confirmed_at.is_not(None))) is not None


def required_by_policy(session: Session, user: User) -> bool:
    """Whether one of the user's institutions requires MFA for a role the user holds there."""
    rows = session.execute(
        select(Membership.role, Institution.settings)
        .join(Institution, Institution.id == Membership.institution_id)
        .where(Membership.user_id == user.id))
    for role, settings in rows:
        required = (settings or {}).get(POLICY_KEY) or []
        if isinstance(required, list) and role in required:
            return True
    return False


def status(session: Session, user: User) -> MFAStatus:
    left = session.scalar(select(func.count()).select_from(RecoveryCode).where(
        RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))) or 0
    return MFAStatus(totp_enabled=totp_enabled(session, user.id), recovery_codes_left=left,
                     required=required_by_policy(session, user))


# --- challenge and enrolment tokens --------------------------------------------------------

def issue_challenge(session: Session, kalpla: Kalpla, user: User) -> MFAChallenge:
    token = kalpla.keys.issue(session, user.id, {"typ": CHALLENGE_TYP,
                                                 "gen": user.token_generation},
                              ttl=CHALLENGE_TTL)
    return MFAChallenge(mfa_token=token, expires_in=CHALLENGE_TTL)


def issue_enrolment(session: Session, kalpla: Kalpla, user: User) -> EnrolmentChallenge:
    token = kalpla.keys.issue(session, user.id, {"typ": ENROLMENT_TYP,
                                                 "gen": user.token_generation},
                              ttl=ENROLMENT_TTL)
    return EnrolmentChallenge(mfa_enrolment_token=token, expires_in=ENROLMENT_TTL)


def token_type(session: Session, kalpla: Kalpla, token: str) -> str | None:
    """The ``typ`` of one of our tokens (verified), or None for anything else."""
    if not kalpla.keys.recognises(session, token):
        return None
    try:
        return str(kalpla.keys.verify(session, token).get("typ", "access"))
    except TokenError:
        return None


def user_from_token(session: Session, kalpla: Kalpla, token: str, typ: str) -> User:
    """The user of a valid challenge or enrolment token of type ``typ``; 401 otherwise (also
    once the user's tokens were revoked, or the account disabled)."""
    invalid = APIError(401, "The token is invalid or has expired; log in again.",
                       "invalid-mfa-token", headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})
    try:
        claims = kalpla.keys.verify(session, token)
    except TokenError:
        raise invalid from None
    if claims.get("typ") != typ:
        raise invalid
    user = session.get(User, claims["sub"])
    if not can_authenticate(user) or claims.get("gen") != user.token_generation:  # type: ignore[union-attr]
        raise invalid
    assert user is not None
    return user


def enrolment_gate(session: Session, kalpla: Kalpla, user: User) -> None:
    """Refuse (403 ``mfa-enrolment-required``, with an enrolment token) a user whom policy
    requires to have MFA but who has none: used when refreshing a session."""
    if required_by_policy(session, user) and not totp_enabled(session, user.id):
        challenge = issue_enrolment(session, kalpla, user)
        raise APIError(403, "Your institution requires two-step verification for your role; "
                       "enrol an authenticator app first.", "mfa-enrolment-required",
                       mfa_enrolment_token=challenge.mfa_enrolment_token,
                       expires_in=challenge.expires_in)


# --- TOTP ----------------------------------------------------------------------------------

def _totp(kalpla: Kalpla, device: TOTPDevice) -> pyotp.TOTP:
    return pyotp.TOTP(_box(kalpla).decrypt(device.secret_encrypted).decode())


def _check_totp(session: Session, kalpla: Kalpla, device: TOTPDevice, code: str) -> bool:
    """Accept ``code`` for the current step or one either side, never twice: the accepted
    step is recorded with a conditional update, so two requests racing with one code cannot
    both win."""
    code = "".join(code.split())
    if not (code.isdigit() and len(code) == 6):
        return False
    totp = _totp(kalpla, device)
    now_step = int(time.time()) // totp.interval
    for step in (now_step - 1, now_step, now_step + 1):
        if step <= device.last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            won = session.execute(update(TOTPDevice).where(
                TOTPDevice.user_id == device.user_id, TOTPDevice.last_step < step)
                .values(last_step=step)).rowcount  # type: ignore[attr-defined]
            return bool(won)
    return False


def begin_enrolment(session: Session, kalpla: Kalpla, user: User,
                    client: Client) -> TOTPEnrolment:
    """A new, unconfirmed TOTP secret (replacing an unconfirmed one), with its otpauth URI
    and QR code; 409 when TOTP is already on."""
    if totp_enabled(session, user.id):
        raise APIError(409, "Two-step verification is already on; turn it off first.",
                       "mfa-already-enabled")
    session.execute(delete(TOTPDevice).where(TOTPDevice.user_id == user.id))
    secret = pyotp.random_base32()
    session.add(TOTPDevice(user_id=user.id, secret_encrypted=_box(kalpla).encrypt(secret.encode()),
                           last_step=0))
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=ISSUER)
    svg = segno.make(uri, error="m").svg_inline(scale=4, title="TOTP enrolment")
    _audit(session, "mfa.enrolment_started", user, client)
    session.flush()
    return TOTPEnrolment(secret=secret, otpauth_uri=uri, qr_svg=svg)


def _normalise_recovery(code: str) -> str:
    table = str.maketrans({"i": "1", "l": "1", "o": "0"})
    return "".join(c for c in code.lower() if c.isalnum()).translate(table)


def _recovery_hash(kalpla: Kalpla, user_id: str, code: str) -> str:
    key = derive_key(kalpla.settings.secret_key, "recovery-codes")
    message = f"{user_id}:{_normalise_recovery(code)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _new_recovery_codes(session: Session, kalpla: Kalpla, user: User) -> list[str]:
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
        code = f"{raw[:5]}-{raw[5:]}"
        codes.append(code)
        session.add(RecoveryCode(user_id=user.id, code_hash=_recovery_hash(kalpla, user.id, code)))
    return codes


def confirm_enrolment(session: Session, kalpla: Kalpla, user: User, code: str,
                      client: Client) -> list[str]:
    """Turn TOTP on with a first correct code; the ten recovery codes (shown this once)."""
    device = session.get(TOTPDevice, user.id)
    if device is None or device.confirmed_at is not None:
        raise APIError(409, "There is no pending TOTP enrolment; start one first.",
                       "no-pending-enrolment")
    if not _check_totp(session, kalpla, device, code):
        raise APIError(422, "The code is wrong; check your device's clock and try again.",
                       "invalid-code", errors={"code": ["Wrong code."]})
    device.confirmed_at = utcnow()
    codes = _new_recovery_codes(session, kalpla, user)
    _audit(session, "mfa.enabled", user, client, factor="totp")
    _mail(session, kalpla, user, "mfa_enabled")
    session.flush()
    return codes


def check_second_factor(session: Session, kalpla: Kalpla, user: User, code: str) -> str | None:
    """``"totp"`` or ``"recovery_code"`` when ``code`` is right (and now spent), else None."""
    device = session.get(TOTPDevice, user.id)
    if device is None or device.confirmed_at is None:
        return None
    if _check_totp(session, kalpla, device, code):
        return "totp"
    spent = session.execute(update(RecoveryCode).where(
        RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None),
        RecoveryCode.code_hash == _recovery_hash(kalpla, user.id, code))
        .values(used_at=utcnow())).rowcount  # type: ignore[attr-defined]
    return "recovery_code" if spent else None


def complete_login(session: Session, kalpla: Kalpla, mfa_token: str, code: str,
                   client: Client) -> TokenPair:
    """Trade a challenge token and a TOTP or recovery code for a session. A wrong code counts
    towards the lockout (committed before the 401)."""
    user = user_from_token(session, kalpla, mfa_token, CHALLENGE_TYP)
    key = throttle.account_key(kalpla.settings.secret_key, user.email)
    throttle.check(session, key)
    factor = check_second_factor(session, kalpla, user, code)
    if factor is None:
        throttle.record_failure(session, key)
        _audit(session, "login.failed", user, client, method="totp")
        session.commit()
        raise APIError(401, "The code is wrong or was already used.", "invalid-code",
                       headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})
    throttle.record_success(session, key)
    if factor == "recovery_code":
        _audit(session, "mfa.recovery_code_used", user, client)
    return start_session(session, kalpla, user, method=f"password+{factor}",
                         user_agent=client.user_agent, ip=client.ip,
                         request_id=client.request_id)


def remove(session: Session, kalpla: Kalpla, user: User, client: Client) -> None:
    """Turn TOTP off and drop the recovery codes (callers check password and code first)."""
    session.execute(delete(TOTPDevice).where(TOTPDevice.user_id == user.id))
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    _audit(session, "mfa.disabled", user, client, factor="totp")
    _mail(session, kalpla, user, "mfa_disabled")
