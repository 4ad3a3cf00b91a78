"""Configuration from the environment (DESIGN section 4): defaults, and every bad value refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service import config as config_module
from service.config import Config, ConfigError, redacted_url
from service.domain import LockMode
from tests.deploy.project import DESIGN_VARIABLES

DEFAULTS = Config(
    database_url="sqlite:///var/bank.db",
    lock_mode=LockMode.LOCKED,
    race_window_ms=0,
    allow_unsafe_modes=False,
    admin_token=None,
    lock_timeout_ms=5000,
    transfer_lock_order="sorted",
    bind="127.0.0.1:8000",
    workers=2,
    threads=4,
)


def test_defaults_match_the_design() -> None:
    """An empty environment gives the defaults of DESIGN section 4."""
    assert Config.from_env({}) == DEFAULTS


def test_blank_values_mean_the_default() -> None:
    """Set-but-empty (or blank) variables fall back to their defaults."""
    names = [
        "BANK_DATABASE_URL",
        "BANK_LOCK_MODE",
        "BANK_RACE_WINDOW_MS",
        "BANK_ALLOW_UNSAFE_MODES",
        "BANK_ADMIN_TOKEN",
        "BANK_LOCK_TIMEOUT_MS",
        "BANK_TRANSFER_LOCK_ORDER",
        "BANK_BIND",
        "BANK_WORKERS",
        "BANK_THREADS",
        "BANK_IDEMPOTENCY_TTL_HOURS",
    ]
    assert Config.from_env(dict.fromkeys(names, "")) == DEFAULTS
    assert Config.from_env(dict.fromkeys(names[:4] + names[5:], "  ")) == DEFAULTS


def test_a_given_mapping_is_the_only_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env(mapping) ignores os.environ; from_env() reads it."""
    monkeypatch.setenv("BANK_LOCK_MODE", "not-a-mode")
    monkeypatch.setenv("BANK_WORKERS", "5")
    assert Config.from_env({}) == DEFAULTS
    monkeypatch.setenv("BANK_LOCK_MODE", "atomic")
    assert (Config.from_env().lock_mode, Config.from_env().workers) == (LockMode.ATOMIC, 5)


def test_every_variable_is_read() -> None:
    """Each BANK_* variable sets its field, trimmed and converted."""
    config = Config.from_env(
        {
            "BANK_DATABASE_URL": " postgresql+psycopg://bank@db:5432/bank ",
            "BANK_LOCK_MODE": "unlocked",
            "BANK_RACE_WINDOW_MS": "5000",
            "BANK_ALLOW_UNSAFE_MODES": "1",
            "BANK_ADMIN_TOKEN": "s3cret-token",
            "BANK_LOCK_TIMEOUT_MS": "10",
            "BANK_TRANSFER_LOCK_ORDER": "request",
            "BANK_BIND": "0.0.0.0:9000",
            "BANK_WORKERS": "64",
            "BANK_THREADS": "256",
            "BANK_IDEMPOTENCY_TTL_HOURS": "1",
        }
    )
    assert config == Config(
        database_url="postgresql+psycopg://bank@db:5432/bank",
        lock_mode=LockMode.UNLOCKED,
        race_window_ms=5000,
        allow_unsafe_modes=True,
        admin_token="s3cret-token",
        lock_timeout_ms=10,
        transfer_lock_order="request",
        bind="0.0.0.0:9000",
        workers=64,
        threads=256,
        idempotency_ttl_hours=1,
    )


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("memory://", "memory://"),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
        ("postgresql+psycopg://h/d", "postgresql+psycopg://h/d"),
        ("postgresql://h/d", "postgresql+psycopg://h/d"),
    ],
)
def test_database_urls_accepted(url: str, stored: str) -> None:
    """memory://, SQLite files and PostgreSQL are accepted; plain postgresql:// means psycopg 3."""
    config = Config.from_env({"BANK_DATABASE_URL": url})
    assert config.database_url == stored
    assert config.is_memory == (url == "memory://")


def test_postgresql_normalisation_keeps_credentials_and_options() -> None:
    """Adding the psycopg driver keeps a percent-encoded password, the port and the query."""
    url = "postgresql://bank:p%40s%2Fs@db:5433/bank?sslmode=require"
    config = Config.from_env({"BANK_DATABASE_URL": url})
    assert config.database_url == "postgresql+psycopg://bank:p%40s%2Fs@db:5433/bank?sslmode=require"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql+psycopg2://h/d",
        "postgresql+asyncpg://h/d",
        "sqlite+aiosqlite:///bank.db",
    ],
)
def test_database_urls_that_cannot_work_are_refused(url: str) -> None:
    """An SQLite database without a file, or a driver that is not installed, is refused."""
    with pytest.raises(ConfigError, match="BANK_DATABASE_URL"):
        Config.from_env({"BANK_DATABASE_URL": url})


@pytest.mark.parametrize("mode", ["locked", "optimistic", "atomic", "fenced"])
def test_safe_modes_need_no_permission(mode: str) -> None:
    """Safe modes start without BANK_ALLOW_UNSAFE_MODES."""
    config = Config.from_env({"BANK_LOCK_MODE": mode})
    assert config.lock_mode == LockMode(mode)
    assert config.initial_mode.lock_mode == LockMode(mode)


@pytest.mark.parametrize("mode", ["unlocked", "process-lock", "redis-lock"])
@pytest.mark.parametrize("allow", [None, "", "0", "false", "no", "off"])
def test_unsafe_mode_without_permission_is_refused(mode: str, allow: str | None) -> None:
    """An unsafe start mode needs BANK_ALLOW_UNSAFE_MODES=1; the message names both variables."""
    environment = {"BANK_LOCK_MODE": mode}
    if allow is not None:
        environment["BANK_ALLOW_UNSAFE_MODES"] = allow
    with pytest.raises(ConfigError, match="BANK_LOCK_MODE") as raised:
        Config.from_env(environment)
    assert "BANK_ALLOW_UNSAFE_MODES" in str(raised.value)


@pytest.mark.parametrize("mode", ["unlocked", "process-lock"])
@pytest.mark.parametrize("allow", ["1", "true", "TRUE", "yes", "on", " 1 "])
def test_unsafe_mode_with_permission_starts(mode: str, allow: str) -> None:
    """With BANK_ALLOW_UNSAFE_MODES set to a true value, unsafe modes may be the start mode."""
    config = Config.from_env({"BANK_LOCK_MODE": mode, "BANK_ALLOW_UNSAFE_MODES": allow})
    assert (config.lock_mode.value, config.allow_unsafe_modes) == (mode, True)


BAD_VALUES = [
    ("BANK_DATABASE_URL", "bank.db"),
    ("BANK_DATABASE_URL", "memory"),
    ("BANK_DATABASE_URL", "sqlite:"),
    ("BANK_DATABASE_URL", "var/bank.db"),
    ("BANK_LOCK_MODE", "fast"),
    ("BANK_LOCK_MODE", "LOCKED"),
    ("BANK_LOCK_MODE", "process_lock"),
    ("BANK_LOCK_MODE", "none"),
    ("BANK_RACE_WINDOW_MS", "-1"),
    ("BANK_RACE_WINDOW_MS", "5001"),
    ("BANK_RACE_WINDOW_MS", "abc"),
    ("BANK_RACE_WINDOW_MS", "1.5"),
    ("BANK_RACE_WINDOW_MS", "1e3"),
    ("BANK_RACE_WINDOW_MS", "0x10"),
    ("BANK_RACE_WINDOW_MS", "+5"),
    ("BANK_RACE_WINDOW_MS", "10ms"),
    ("BANK_RACE_WINDOW_MS", "1 0"),
    ("BANK_ALLOW_UNSAFE_MODES", "2"),
    ("BANK_ALLOW_UNSAFE_MODES", "maybe"),
    ("BANK_ALLOW_UNSAFE_MODES", "-1"),
    ("BANK_ALLOW_UNSAFE_MODES", "y"),
    ("BANK_ADMIN_TOKEN", "short"),
    ("BANK_ADMIN_TOKEN", "1234567"),
    ("BANK_LOCK_TIMEOUT_MS", "0"),
    ("BANK_LOCK_TIMEOUT_MS", "9"),
    ("BANK_LOCK_TIMEOUT_MS", "60001"),
    ("BANK_LOCK_TIMEOUT_MS", "-5000"),
    ("BANK_LOCK_TIMEOUT_MS", "5s"),
    ("BANK_TRANSFER_LOCK_ORDER", "random"),
    ("BANK_TRANSFER_LOCK_ORDER", "Sorted"),
    ("BANK_TRANSFER_LOCK_ORDER", "ascending"),
    ("BANK_BIND", "localhost"),
    ("BANK_BIND", "8000"),
    ("BANK_BIND", ":8000"),
    ("BANK_BIND", "127.0.0.1:"),
    ("BANK_BIND", "127.0.0.1:http"),
    ("BANK_BIND", "127.0.0.1:123456"),
    ("BANK_BIND", "127.0.0.1 :8000"),
    ("BANK_BIND", "http://127.0.0.1:8000"),
    ("BANK_BIND", "unix:relative.sock"),
    ("BANK_WORKERS", "0"),
    ("BANK_WORKERS", "65"),
    ("BANK_WORKERS", "two"),
    ("BANK_WORKERS", "-1"),
    ("BANK_WORKERS", "2.0"),
    ("BANK_THREADS", "0"),
    ("BANK_THREADS", "257"),
    ("BANK_THREADS", "eight"),
    ("BANK_IDEMPOTENCY_TTL_HOURS", "0"),
    ("BANK_IDEMPOTENCY_TTL_HOURS", "8761"),
    ("BANK_IDEMPOTENCY_TTL_HOURS", "1.5"),
    ("BANK_IDEMPOTENCY_TTL_HOURS", "a day"),
    ("BANK_REDIS_PREFIX", "two words"),
    ("BANK_REDIS_PREFIX", "bank*"),
    ("BANK_REDIS_PREFIX", "bank:"),
    ("BANK_REDIS_PREFIX", "x" * 65),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_value_is_refused_naming_the_variable(name: str, value: str) -> None:
    """Each bad value stops start-up with a one-line ConfigError that names its variable."""
    with pytest.raises(ConfigError, match=name) as raised:
        Config.from_env({name: value})
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BANK_RACE_WINDOW_MS", "9" * 5000),
        ("BANK_LOCK_TIMEOUT_MS", "9" * 5000),
        ("BANK_WORKERS", "9" * 5000),
        ("BANK_THREADS", "1" * 4301),
    ],
    ids=["race-window", "lock-timeout", "workers", "threads"],
)
def test_absurdly_long_number_is_refused_naming_the_variable(name: str, value: str) -> None:
    """A number thousands of digits long is refused like any out-of-range value."""
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


@pytest.mark.parametrize("value", ["127.0.0.1:65536", "127.0.0.1:99999", "[::1]:70000"])
def test_port_beyond_65535_is_refused(value: str) -> None:
    """A port that cannot exist is a bad BANK_BIND value."""
    with pytest.raises(ConfigError, match="BANK_BIND"):
        Config.from_env({"BANK_BIND": value})


@pytest.mark.parametrize(
    "value",
    ["://", "mysql://user@localhost/bank", "postgres://user@localhost/bank", "nosuchdb://x"],
)
def test_unsupported_database_url_is_refused(value: str) -> None:
    """Only memory://, SQLite and PostgreSQL URLs are accepted at start-up."""
    with pytest.raises(ConfigError, match="BANK_DATABASE_URL"):
        Config.from_env({"BANK_DATABASE_URL": value})


@pytest.mark.parametrize(
    "bind", ["127.0.0.1:8000", "0.0.0.0:80", "localhost:8000", "[::1]:8000", "unix:/run/bank.sock"]
)
def test_bind_forms_accepted(bind: str) -> None:
    """HOST:PORT, [IPv6]:PORT and unix:/path are valid binds."""
    assert Config.from_env({"BANK_BIND": bind}).bind == bind


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("BANK_RACE_WINDOW_MS", "0", "race_window_ms", 0),
        ("BANK_RACE_WINDOW_MS", "5000", "race_window_ms", 5000),
        ("BANK_LOCK_TIMEOUT_MS", "10", "lock_timeout_ms", 10),
        ("BANK_LOCK_TIMEOUT_MS", "60000", "lock_timeout_ms", 60000),
        ("BANK_WORKERS", "1", "workers", 1),
        ("BANK_WORKERS", "64", "workers", 64),
        ("BANK_THREADS", "1", "threads", 1),
        ("BANK_THREADS", " 256 ", "threads", 256),
        ("BANK_RACE_WINDOW_MS", "007", "race_window_ms", 7),
    ],
)
def test_integer_bounds_are_inclusive(name: str, value: str, field: str, expected: int) -> None:
    """The limits of every integer setting are themselves valid."""
    assert getattr(Config.from_env({name: value}), field) == expected


def test_admin_token_of_eight_characters_enables_admin() -> None:
    """An 8-character token is the shortest accepted; an unset token disables admin."""
    assert Config.from_env({"BANK_ADMIN_TOKEN": "12345678"}).admin_token == "12345678"
    assert Config.from_env({}).admin_token is None


def test_configs_built_in_code_are_validated_too() -> None:
    """with_overrides runs the same cross-field rules as from_env."""
    with pytest.raises(ConfigError, match="BANK_LOCK_MODE"):
        Config().with_overrides(lock_mode=LockMode.UNLOCKED)
    with pytest.raises(ConfigError, match="BANK_ADMIN_TOKEN"):
        Config().with_overrides(admin_token="short")
    with pytest.raises(ConfigError, match="BANK_DATABASE_URL"):
        Config().with_overrides(database_url="bank.db")
    allowed = Config().with_overrides(lock_mode=LockMode.UNLOCKED, allow_unsafe_modes=True)
    assert allowed.lock_mode is LockMode.UNLOCKED


def test_config_is_frozen() -> None:
    """A Config cannot be changed after validation (only replaced through with_overrides)."""
    config = Config.from_env({})
    with pytest.raises(AttributeError):
        config.workers = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [("BANK_WORKERS", "\u0663"), ("BANK_THREADS", "\uff18"), ("BANK_BIND", "127.0.0.1:\u0668000")],
)
def test_non_ascii_digits_are_refused(name: str, value: str) -> None:
    """Only ASCII digits count: an Arabic-Indic three is not a worker count."""
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


@pytest.mark.parametrize("token", [" padded-token ", "has a space", "tab\there-token", "short"])
def test_admin_token_that_no_header_could_carry_is_refused(token: str) -> None:
    """A token with spaces or control characters could never be presented, so it is refused."""
    with pytest.raises(ConfigError, match="BANK_ADMIN_TOKEN"):
        Config.from_env({"BANK_ADMIN_TOKEN": token})


SECRET = "hunter2-Secret"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://bank:{SECRET}@db:notaport/bank",
        f"postgresql+psycopg://bank:{SECRET}@[::1/bank",
        f"postgresql://bank:{SECRET}@db:99999/bank",
        f"postgresql+psycopg2://bank:{SECRET}@db/bank",
        f"mysql://bank:{SECRET}@db/bank",
        f"bank:{SECRET}@db/bank",
    ],
    ids=[
        "port-not-a-number",
        "broken-ipv6",
        "port-out-of-range",
        "driver",
        "database",
        "no-scheme",
    ],
)
def test_a_refused_database_url_is_named_without_its_password(url: str) -> None:
    """Every bad BANK_DATABASE_URL is one ConfigError line that never echoes the password."""
    with pytest.raises(ConfigError, match="BANK_DATABASE_URL") as raised:
        Config.from_env({"BANK_DATABASE_URL": url})
    assert SECRET not in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("token", [f" {SECRET} ", f"has {SECRET}", f"{SECRET}\t"])
def test_a_refused_admin_token_is_not_echoed(token: str) -> None:
    """The message for a bad BANK_ADMIN_TOKEN names the variable, never the token."""
    with pytest.raises(ConfigError, match="BANK_ADMIN_TOKEN") as raised:
        Config.from_env({"BANK_ADMIN_TOKEN": token})
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql+psycopg://bank:{SECRET}@db/bank", "postgresql+psycopg://bank:***@db/bank"),
        (
            "postgresql+psycopg://bank:p%40ss@db:5433/bank",
            "postgresql+psycopg://bank:***@db:5433/bank",
        ),
        (
            f"postgresql+psycopg://bank@db/bank?password={SECRET}&sslmode=require",
            "postgresql+psycopg://bank@db/bank?password=***&sslmode=require",
        ),
        ("postgresql+psycopg://bank@db/bank", "postgresql+psycopg://bank@db/bank"),
        ("sqlite:///var/bank.db", "sqlite:///var/bank.db"),
        ("memory://", "memory://"),
    ],
)
def test_redacted_url_hides_the_password_wherever_it_is(url: str, shown: str) -> None:
    """A URL shown to people hides a password in the user part or in the query."""
    assert redacted_url(url) == shown


def test_repr_and_shown_settings_hide_the_secrets() -> None:
    """repr(config) and the printable settings carry neither the password nor the admin token."""
    config = Config(
        database_url=f"postgresql+psycopg://bank:{SECRET}@db/bank", admin_token="admin-token-42"
    )
    for text in (repr(config), str(config.shown_settings())):
        assert SECRET not in text and "admin-token-42" not in text
        assert "postgresql+psycopg://bank:***@db/bank" in text
    assert config.shown_settings()["admin_token"] == "***"
    assert Config().shown_settings()["admin_token"] is None


# --------------------------------------------------------------------------- client access


def test_access_settings_are_off_by_default() -> None:
    """No client token, no admin-only reads, no CORS origin unless configured."""
    config = Config.from_env({})
    assert (config.api_tokens, config.admin_only_reads, config.cors_origins) == ((), False, ())
    blank = {"BANK_API_TOKENS": "  ", "BANK_ADMIN_ONLY_READS": "", "BANK_CORS_ORIGINS": " "}
    assert Config.from_env(blank) == config


def test_api_tokens_from_a_comma_separated_list() -> None:
    """Tokens are trimmed, kept in order, and a repeated one is kept once."""
    config = Config.from_env({"BANK_API_TOKENS": " client-one , client-two,client-one "})
    assert config.api_tokens == ("client-one", "client-two")


def test_api_tokens_from_a_file(tmp_path: Path) -> None:
    """An absolute path names a file: one token a line, blank lines and # comments skipped."""
    tokens = tmp_path / "tokens"
    tokens.write_text("# the mobile app\nclient-one\n\n  client-two  \n#client-three\n")
    assert Config.from_env({"BANK_API_TOKENS": str(tokens)}).api_tokens == (
        "client-one",
        "client-two",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "1 to 1000 tokens"),
        ("# only a comment\n\n", "1 to 1000 tokens"),
        ("good-token-1\nhas a space\n", "token 2 of the token file"),
        ("short\n", "token 1 of the token file"),
        ("with,comma-token\n", "token 1 of the token file"),
        ("".join(f"client-token-{n}\n" for n in range(1001)), "1 to 1000 tokens"),
    ],
)
def test_a_bad_token_file_is_refused_without_echoing_a_token(
    tmp_path: Path, content: str, message: str
) -> None:
    """An empty file, a token no header could carry, or too many: refused, no token shown."""
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    with pytest.raises(ConfigError, match="BANK_API_TOKENS") as raised:
        Config.from_env({"BANK_API_TOKENS": str(tokens)})
    assert message in str(raised.value)
    assert "has a space" not in str(raised.value) and "with,comma" not in str(raised.value)


def test_an_unreadable_token_file_is_refused(tmp_path: Path) -> None:
    """A missing file, a directory, or a file that is not UTF-8 stop the start with the reason."""
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00token")
    for path, reason in (
        (tmp_path / "missing", "No such file"),
        (tmp_path, "Is a directory"),
        (binary, "not UTF-8"),
    ):
        with pytest.raises(ConfigError, match="BANK_API_TOKENS") as raised:
            Config.from_env({"BANK_API_TOKENS": str(path)})
        assert reason in str(raised.value)


@pytest.mark.parametrize(
    "value",
    [",", "good-token-1,,good-token-2", "short", f"{SECRET} x", "tab\tinside-token", "é" * 8],
)
def test_a_bad_token_list_is_refused_without_echoing_a_token(value: str) -> None:
    """Empty items, short tokens, spaces and non-ASCII are refused; the message shows none."""
    with pytest.raises(ConfigError, match="BANK_API_TOKENS") as raised:
        Config.from_env({"BANK_API_TOKENS": value})
    assert SECRET not in str(raised.value) and "inside-token" not in str(raised.value)


def test_api_tokens_built_in_code_are_validated() -> None:
    """A token given in code is held to the same rule."""
    with pytest.raises(ConfigError, match="BANK_API_TOKENS"):
        Config().with_overrides(api_tokens=("has a space",))


def test_repr_and_shown_settings_hide_the_api_tokens() -> None:
    """Only the count of client tokens is shown, never one of them."""
    config = Config.from_env({"BANK_API_TOKENS": f"{SECRET}-1,{SECRET}-2"})
    for text in (repr(config), str(config.shown_settings())):
        assert SECRET not in text
    assert config.shown_settings()["api_tokens"] == "2 tokens ***"
    assert Config().shown_settings()["api_tokens"] == ()


def test_admin_only_reads_need_the_admin_token() -> None:
    """BANK_ADMIN_ONLY_READS=1 without BANK_ADMIN_TOKEN could lock everyone out: refused."""
    with pytest.raises(ConfigError, match="BANK_ADMIN_ONLY_READS=1 needs BANK_ADMIN_TOKEN"):
        Config.from_env({"BANK_ADMIN_ONLY_READS": "1"})
    config = Config.from_env({"BANK_ADMIN_ONLY_READS": "yes", "BANK_ADMIN_TOKEN": "admin-token"})
    assert config.admin_only_reads
    with pytest.raises(ConfigError, match="BANK_ADMIN_ONLY_READS"):
        Config.from_env({"BANK_ADMIN_ONLY_READS": "sometimes"})


def test_cors_origins_are_exact_origins() -> None:
    """Scheme, host and optional port; trimmed; repeats kept once."""
    config = Config.from_env(
        {
            "BANK_CORS_ORIGINS": "https://app.example:8443, http://[::1]:3000,https://app.example:8443"
        }
    )
    assert config.cors_origins == ("https://app.example:8443", "http://[::1]:3000")


@pytest.mark.parametrize(
    "origin",
    ["*", "https://*.example", "app.example", "https://app.example/", "https://a.example/path",
     "ftp://app.example", "null", "https://app.example,", "https://app example"],
)  # fmt: skip
def test_cors_origin_that_is_not_exact_is_refused(origin: str) -> None:
    """Wildcards, paths, other schemes, `null` and empty items are refused, naming the variable."""
    with pytest.raises(ConfigError, match="BANK_CORS_ORIGINS"):
        Config.from_env({"BANK_CORS_ORIGINS": origin})


def test_the_documented_surface_is_what_config_reads() -> None:
    """service/config.py reads exactly the variables the docs may mention (tests/deploy)."""
    source = Path(config_module.__file__).read_text()
    assert set(re.findall(r'"(BANK_[A-Z_]+)"', source)) == DESIGN_VARIABLES
