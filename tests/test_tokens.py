"""Token claims as PROTOCOL.md lists them: sub and exp required, nbf checked, iat ignored,
aud refused; the times are JSON numbers."""

from __future__ import annotations

import time

import jwt
import pytest

from seatd.auth import TokenAuthority
from seatd.errors import Unauthenticated

SECRET = "token-test-secret-0123456789abcdef-0123"


def _token(**claims: object) -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600, **claims}, SECRET, "HS256")


def test_iat_is_ignored_even_in_the_future() -> None:
    """An issuer whose clock runs ahead still gets its users in."""
    identity = TokenAuthority(SECRET).verify(_token(iat=int(time.time()) + 10_000))
    assert (identity.user_id, identity.role) == ("alice", "user")


def test_nbf_in_the_future_is_refused_and_in_the_past_accepted() -> None:
    authority = TokenAuthority(SECRET)
    with pytest.raises(Unauthenticated, match="invalid token"):
        authority.verify(_token(nbf=int(time.time()) + 600))
    assert authority.verify(_token(nbf=int(time.time()) - 600)).user_id == "alice"


def test_a_token_a_few_seconds_past_expiry_is_still_accepted_and_later_refused() -> None:
    authority = TokenAuthority(SECRET)
    now = int(time.time())
    assert authority.verify(_token(exp=now - 2)).user_id == "alice"
    with pytest.raises(Unauthenticated, match="expired"):
        authority.verify(_token(exp=now - 60))


def test_a_sub_with_a_lone_surrogate_is_refused_and_a_character_beyond_the_bmp_accepted() -> None:
    """A JSON escape can carry half a surrogate pair, which no welcome could encode as UTF-8."""
    authority = TokenAuthority(SECRET)
    with pytest.raises(Unauthenticated, match="lone surrogates"):
        authority.verify(_token(sub="kiosk-\ud800"))
    assert authority.verify(_token(sub="kiosk-\U0001f3ab")).user_id == "kiosk-\U0001f3ab"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": str(int(time.time()) + 3600)},  # PyJWT alone takes a numeric string
        {"exp": True},  # PyJWT alone reads it as 1: "expired", not "invalid"
        {"exp": [1]},
        {"nbf": "0"},
        {"iat": "yesterday"},
    ],
)
def test_times_that_are_not_numbers_make_the_token_invalid(claims: dict[str, object]) -> None:
    with pytest.raises(Unauthenticated, match=r"invalid token: \w+ must be a number"):
        TokenAuthority(SECRET).verify(_token(**claims))


@pytest.mark.parametrize("audience", [None, [], "", "seatd", ["seatd"]])
def test_any_audience_claim_is_refused(audience: object) -> None:
    with pytest.raises(Unauthenticated, match="invalid token"):
        TokenAuthority(SECRET).verify(_token(aud=audience))


def test_a_fractional_expiry_is_a_time() -> None:
    expires = time.time() + 3600.5
    assert TokenAuthority(SECRET).verify(_token(exp=expires)).expires_at == expires
