"""Password and username policy (NIST SP 800-63B; ETSI EN 303 645 5.1).

Length 12..128 characters, no composition rules, refused with a reason when the password is on
the shipped blocklist (Django's list of 20,000 common passwords, BSD licence, plus camera vendor
defaults), is built only from blocklisted words ("adminadmin1234"), is a run of one character or a
keyboard/number sequence, or contains the username, the device serial or the model.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from functools import cache
from importlib import resources

from agent.errors import ValidationError

MIN_LENGTH = 12
MAX_LENGTH = 128
USERNAME_RE = re.compile(r"^[a-z][a-z0-9._-]{2,31}$")
_SEQUENCES = (
    "abcdefghijklmnopqrstuvwxyz",
    "01234567890",
    "qwertyuiopasdfghjklzxcvbnm",
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
    "qazwsxedcrfvtgbyhnujmikolp",
)
_MIN_WORD = 3


class PasswordRejected(ValidationError):
    code = "password.rejected"


@cache
def _blocklist() -> frozenset[str]:
    pkg = resources.files("agent.auth") / "data"
    words: set[str] = set()
    with (pkg / "common-passwords.txt.gz").open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        words.update(line.strip().lower() for line in fh if line.strip())
    text = (pkg / "camera-defaults.txt").read_text(encoding="utf-8")
    words.update(w.strip().lower() for w in text.splitlines() if w.strip() and not w.startswith("#"))
    return frozenset(words)


@cache
def _max_word_len() -> int:
    return max(len(w) for w in _blocklist())


def normalize(password: str) -> str:
    # NFKC so that look-alike forms compare equal and the same password always hashes the same.
    return unicodedata.normalize("NFKC", password)


def _only_blocklisted_words(pw: str) -> bool:
    """True when ``pw`` splits entirely into blocklisted words / digit runs (dynamic programming)."""
    words = _blocklist()
    n = len(pw)
    longest = _max_word_len()
    ok = [False] * (n + 1)
    ok[0] = True
    for end in range(1, n + 1):
        for start in range(max(0, end - longest), end):
            if ok[start]:
                piece = pw[start:end]
                if (len(piece) >= _MIN_WORD and piece in words) or (piece.isdigit() and len(piece) <= 4):
                    ok[end] = True
                    break
    return ok[n]


def _is_trivial(pw: str) -> bool:
    if len(set(pw)) <= 2:
        return True
    for seq in _SEQUENCES:
        doubled = seq + seq
        if pw in doubled or pw[::-1] in doubled:
            return True
    return False


def check_password(password: str, *, username: str, context: tuple[str, ...] = ()) -> str:
    """Return the normalized password or raise ``PasswordRejected`` naming the reason.

    ``context``: words specific to this device (serial, model) that must not appear.
    """
    if not isinstance(password, str):
        raise PasswordRejected("password must be a string", field="password")
    pw = normalize(password)
    if len(pw) < MIN_LENGTH:
        raise PasswordRejected(f"password must have at least {MIN_LENGTH} characters", field="password")
    if len(pw) > MAX_LENGTH:
        raise PasswordRejected(f"password must have at most {MAX_LENGTH} characters", field="password")
    low = pw.lower()
    if low in _blocklist() or _only_blocklisted_words(low):
        raise PasswordRejected("password is on the list of common or breached passwords", field="password")
    if _is_trivial(low):
        raise PasswordRejected("password is a repeated character or a keyboard sequence", field="password")
    if username and username.lower() in low:
        raise PasswordRejected("password must not contain the username", field="password")
    for word in context:
        if word and len(word) >= 4 and word.lower() in low:
            raise PasswordRejected("password must not contain the device serial or model", field="password")
    return pw


def check_username(username: object) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise ValidationError(
            "username must be 3-32 characters: lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter",
            code="username.invalid",
            field="username",
        )
    return username
