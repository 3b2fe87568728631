"""Access tokens: HS256 JWTs with ``sub`` (who), ``role`` (what they may do) and ``exp``.

Identity always comes from a verified token, never from a request field: a ``user`` acts as
itself, an ``agent`` (a box office, a kiosk) acts for the customer each request names in
``on_behalf_of``, and only an ``admin`` creates events. PyJWT does the signing and the claim
checks for required claims, so we do not hand-roll cryptography; the times are checked here,
after their types (``_check_times``).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import jwt

from seatd.errors import Forbidden, InvalidRequest, Unauthenticated

__all__ = ["ROLES", "SUBJECT_RULE", "Identity", "Role", "TokenAuthority", "valid_subject"]

Role = Literal["admin", "agent", "user"]
ROLES: tuple[Role, ...] = ("admin", "agent", "user")
_ALGORITHM = "HS256"
_LEEWAY_S = 5
# A lone UTF-16 surrogate can arrive through a JSON escape (\ud800) in the token's payload;
# it has no UTF-8 form, so the welcome naming the user could not be sent.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
SUBJECT_RULE = (
    "sub must be 1 to 128 printable characters (no control characters or lone surrogates)"
)
# 9999-12-31T23:59:59Z: an expiry is sent back as an RFC 3339 time, which has four-digit years.
_LAST_EXPIRY = 253_402_300_799


def valid_subject(subject: object) -> TypeGuard[str]:
    """Whether a token's ``sub`` may name a user (it becomes the connection's user_id)."""
    return isinstance(subject, str) and 0 < len(subject) <= 128 and not _UNPRINTABLE.search(subject)


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    role: Role
    expires_at: float | None = None

    def acting_for(self, on_behalf_of: str | None) -> str:
        """The customer a request acts for, or Forbidden/InvalidRequest if it may not."""
        if on_behalf_of is None:
            if self.role == "agent":
                raise InvalidRequest(
                    "an agent must name the customer in on_behalf_of",
                    details={"path": "$.on_behalf_of"},
                )
            return self.user_id
        if self.role == "user" and on_behalf_of != self.user_id:
            raise Forbidden("a user token can only act for its own user")
        return on_behalf_of

    def require_admin(self, action: str) -> None:
        if self.role != "admin":
            raise Forbidden(f"only an admin may {action}")


class TokenAuthority:
    """Mints and verifies tokens with one shared secret."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def mint(
        self, subject: str, role: Role, ttl_s: float = 86400.0, now: float | None = None
    ) -> str:
        issued = time.time() if now is None else now
        claims = {"sub": subject, "role": role, "iat": int(issued), "exp": int(issued + ttl_s)}
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                # The times are checked below, once their types are: PyJWT takes "exp": "17..."
                # (a string) as a time, and "exp": true as 1 (an expired token, not a bad one).
                options={
                    "require": ["sub", "exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"invalid token: {error}") from None
        expires_at = _check_times(claims, time.time())
        if "aud" in claims:  # PyJWT lets "aud": null and "aud": [] through
            raise Unauthenticated("invalid token: an audience (aud) claim is not accepted")
        subject, role = claims.get("sub"), claims.get("role", "user")
        if not valid_subject(subject):
            raise Unauthenticated(f"invalid token: {SUBJECT_RULE}")
        if role not in ROLES:
            raise Unauthenticated(f"invalid token: role must be one of {', '.join(ROLES)}")
        return Identity(subject, role, expires_at)


def _check_times(claims: dict[str, Any], now: float) -> float:
    """``exp`` (and ``nbf``, ``iat`` when present) must be JSON numbers of POSIX seconds;
    ``exp`` is returned. ``iat`` is informational (PROTOCOL.md): an issuer whose clock runs
    ahead must not lock its users out. An ``exp`` that cannot be written back as a time, e.g.
    given in milliseconds by mistake, makes the token invalid rather than failing the
    connection later."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise Unauthenticated(f"invalid token: {name} must be a number of POSIX seconds")
    try:
        expires_at = float(claims["exp"])
    except OverflowError:  # an integer beyond any float
        expires_at = math.inf
    if not expires_at <= _LAST_EXPIRY:
        raise Unauthenticated("invalid token: exp must be a time before the year 10000")
    if expires_at <= now - _LEEWAY_S:
        raise Unauthenticated("the token has expired")
    if claims.get("nbf", -math.inf) > now + _LEEWAY_S:
        raise Unauthenticated("invalid token: the token is not yet valid (nbf)")
    return expires_at
