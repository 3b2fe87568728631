from __future__ import annotations

import pytest

from seatd.config import VARIABLES, ConfigError, Settings

SECRET = "x" * 32


def test_defaults_need_only_the_secret() -> None:
    settings = Settings.from_env({"SEATD_JWT_SECRET": SECRET})
    assert settings.port == 8080
    assert settings.default_hold_duration == 300
    assert settings.max_seats_per_user == 8
    assert settings.public()["jwt_secret"] == "***"


def test_values_are_read_from_the_environment() -> None:
    env = {
        "SEATD_JWT_SECRET": SECRET,
        "PORT": "9000",
        "POSTGRES_HOST": "db",
        "POSTGRES_PORT": "6543",
        "REDIS_HOST": "cache",
        "REDIS_PORT": "7000",
        "DEFAULT_HOLD_DURATION": "90",
        "MAX_SEATS_PER_USER": "3",
    }
    s = Settings.from_env(env)
    assert (s.port, s.postgres_host, s.postgres_port, s.redis_host, s.redis_port) == (
        9000,
        "db",
        6543,
        "cache",
        7000,
    )
    assert (s.default_hold_duration, s.max_seats_per_user) == (90.0, 3)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SEATD_JWT_SECRET is required"),
        (
            {"SEATD_JWT_SECRET": "short"},
            "SEATD_JWT_SECRET=(the value is not shown) is invalid: must be at least 32 bytes",
        ),
        ({"PORT": "eighty"}, "PORT='eighty' is invalid"),
        ({"PORT": "70000"}, "PORT='70000' is invalid: must be between 0 and 65535"),
        ({"MAX_SEATS_PER_USER": "0"}, "MAX_SEATS_PER_USER='0' is invalid"),
        ({"DEFAULT_HOLD_DURATION": "-5"}, "DEFAULT_HOLD_DURATION='-5' is invalid"),
        (
            {"DEFAULT_HOLD_DURATION": "600", "MAX_HOLD_LIFETIME": "60"},
            "MAX_HOLD_LIFETIME (60) must be at least",
        ),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' is invalid: must be one of"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(env: dict[str, str], message: str) -> None:
    full = {"SEATD_JWT_SECRET": SECRET, **env} if "SEATD_JWT_SECRET" not in env and env else env
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(full)
    assert message in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"PORT": "x", "REDIS_PORT": "y"})
    text = str(caught.value)
    assert (
        "PORT='x'" in text and "REDIS_PORT='y'" in text and "SEATD_JWT_SECRET is required" in text
    )


def test_every_variable_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [v.name for v in VARIABLES if f"`{v.name}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"


def test_a_malformed_secret_is_named_but_never_echoed() -> None:
    env = {"SEATD_JWT_SECRET": "short-and-secret"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert "SEATD_JWT_SECRET" in str(caught.value)
    assert "short-and-secret" not in str(caught.value)


def test_metrics_is_off_unless_switched_on() -> None:
    assert Settings.from_env({"SEATD_JWT_SECRET": SECRET}).metrics is False
    assert Settings.from_env({"SEATD_JWT_SECRET": SECRET, "SEATD_METRICS": "On"}).metrics is True
    with pytest.raises(ConfigError, match="SEATD_METRICS='yes' is invalid: must be one of off, on"):
        Settings.from_env({"SEATD_JWT_SECRET": SECRET, "SEATD_METRICS": "yes"})
