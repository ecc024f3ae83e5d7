"""Accounts created from the command line: plain functions over a session (no click)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kalpla_core.db import utcnow
from kalpla_core.identity.models import User
from kalpla_core.identity.passwords import hash_password
from kalpla_core.identity.policy import password_problems


class AccountExists(Exception):
    """An account with this email exists already."""


def normalise_email(email: str) -> str:
    return email.strip().lower()


def email_taken(session: Session, email: str) -> bool:
    return session.scalar(select(User.id).where(
        func.lower(User.email) == normalise_email(email))) is not None


def create_platform_admin(session: Session, email: str, password: str, name: str) -> User:
    """A verified platform admin with an argon2id password hash."""
    email = normalise_email(email)
    if email_taken(session, email):
        raise AccountExists(f"A user with the email {email} exists already.")
    problems = password_problems(password, email=email, name=name)
    if problems:
        # The same policy as every other account: length and the common-password list.
        raise ValueError(" ".join(problems))
    user = User(email=email, name=name, password_hash=hash_password(password),
                is_platform_admin=True, email_verified_at=utcnow())
    session.add(user)
    session.flush()
    return user
