"""The password policy, after NIST SP 800-63B: length limits and a list of known-bad passwords,
no composition rules (no "one digit and one symbol") and no forced periodic changes.

Length is counted in Unicode code points after NFKC normalisation, so a password typed on
two devices that encode it differently counts (and hashes) the same.
"""

from __future__ import annotations

import unicodedata
from functools import cache
from importlib import resources

from kalpla_core.http.problems import APIError

MIN_LENGTH = 12
MAX_LENGTH = 128
_DATA_FILE = "common-passwords.txt"


@cache
def common_passwords() -> frozenset[str]:
    """The bundled list, lower-case (``identity/data/common-passwords.txt``)."""
    text = resources.files("kalpla_core.identity").joinpath("data", _DATA_FILE).read_text("utf-8")
    return frozenset(line.strip() for line in text.splitlines()
                     if line.strip() and not line.startswith("#"))


def normalise_password(password: str) -> str:
    """The form that is hashed and checked: NFKC, as 800-63B recommends."""
    return unicodedata.normalize("NFKC", password)


def password_problems(password: str, *, email: str = "", name: str = "") -> list[str]:
    """Why ``password`` is refused (an empty list when it is acceptable)."""
    password = normalise_password(password)
    if len(password) < MIN_LENGTH:
        return [f"Use at least {MIN_LENGTH} characters."]
    if len(password) > MAX_LENGTH:
        return [f"Use at most {MAX_LENGTH} characters."]
    folded = password.casefold()
    squeezed = "".join(folded.split())
    problems = []
    if folded in common_passwords() or squeezed in common_passwords():
        problems.append("This password is too common; choose another.")
    context = {email.strip().casefold(), email.strip().casefold().partition("@")[0],
               name.strip().casefold(), "kalpla"} - {""}
    if folded in context or squeezed in context:
        problems.append("The password must not be your e-mail address, your name or the "
                        "service's name.")
    if len(set(folded)) < 4:
        problems.append("The password repeats too few different characters.")
    return problems


def check_password(password: str, *, email: str = "", name: str = "",
                   field: str = "password") -> None:
    """Raise a 422 problem naming ``field`` when ``password`` breaks the policy."""
    problems = password_problems(password, email=email, name=name)
    if problems:
        raise APIError(422, "The password does not meet the password policy.", "weak-password",
                       errors={field: problems})
