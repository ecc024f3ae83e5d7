"""``kalpla users …``."""

from __future__ import annotations

from typing import Any

import click
from flask.cli import AppGroup
from marshmallow import ValidationError, validate

from kalpla_core.cli.accounts import (
    AccountExists,
    create_platform_admin,
    email_taken,
    normalise_email,
)
from kalpla_core.cli.group import kalpla
from kalpla_core.identity.policy import MIN_LENGTH as ADMIN_PASSWORD_MIN_LENGTH
from kalpla_core.identity.policy import password_problems


class Email(click.ParamType):
    name = "EMAIL"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        email = normalise_email(str(value))
        try:
            validate.Email()(email)
        except ValidationError:
            self.fail(f"{value!r} is not an email address", param, ctx)
        return email


class Password(click.ParamType):
    name = "PASSWORD"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        problems = password_problems(str(value))
        if problems:
            self.fail(" ".join(problems), param, ctx)
        return str(value)


@click.group(cls=AppGroup)
def users() -> None:
    """User accounts."""


@users.command("create-admin")
@click.option("--email", type=Email())
@click.option("--password", type=Password(),
              help=f"At least {ADMIN_PASSWORD_MIN_LENGTH} characters; prompted (hidden) "
                   "when left out.")
@click.option("--name", help="Display name.")
def create_admin(email: str | None, password: str | None, name: str | None) -> None:
    """Create a platform admin; asks for whatever the options leave out."""
    k = kalpla()
    if email is None:
        email = click.prompt("Email", type=Email())
    assert email is not None
    with k.db.session() as session:
        # Checked before asking for a password nobody will use.
        if email_taken(session, email):
            raise click.ClickException(f"A user with the email {email} exists already.")
    if name is None:
        name = click.prompt("Name", default=email.split("@")[0])
    if password is None:
        password = click.prompt("Password", type=Password(), hide_input=True,
                                confirmation_prompt=True)
    assert name is not None and password is not None
    try:
        with k.db.session() as session:
            user = create_platform_admin(session, email, password, name)
    except AccountExists as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Created platform admin {user.email} (id {user.id})")
