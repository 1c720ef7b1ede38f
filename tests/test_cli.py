"""The command line, in-process. The CLI calls ``asyncio.run`` itself: these tests are sync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from openletz import __version__
from openletz.cli import main

# Settings that the surrounding environment might set and that would lead the CLI
# away from the test's own data directory.
_CLEARED = (
    "OPENLETZ_DATABASE_URL",
    "OPENLETZ_CONFIG",
    "OPENLETZ_ENVIRONMENT",
    "OPENLETZ_SECRET_KEY",
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    return {"OPENLETZ_DATA_DIR": str(tmp_path / "data"), **dict.fromkeys(_CLEARED)}


@pytest.fixture
def cli(env: dict[str, str | None]):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), env=env)

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.exception is None
    return result


def failed_cleanly(result: Result) -> str:
    """A user's mistake: non-zero exit, one line on stderr, no traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def _key(cli, user: str = "alice") -> str:  # type: ignore[no-untyped-def]
    result = ok(cli("keys", "create", "--user", user))
    return result.stdout.strip()


def _row(listing: str, prefix: str) -> str:
    rows = [line for line in listing.splitlines() if prefix in line]
    assert len(rows) == 1, listing
    return rows[0]


def test_keys_create_prints_only_the_key(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = ok(cli("keys", "create", "--user", "alice"))
    assert result.stdout.endswith("\n")
    out = result.stdout.splitlines()
    assert len(out) == 1
    key = out[0]
    assert key.startswith("olz_")
    assert re.fullmatch(r"olz_[A-Za-z0-9_-]{40,}", key)
    # The warning goes to stderr, so that `KEY=$(openletz keys create ...)` works.
    assert "alice" in result.stderr
    assert key not in result.stderr
    # The database is in the data directory the environment named.
    assert (tmp_path / "data" / "openletz.db").exists()


def test_keys_create_gives_a_new_key_each_time(cli) -> None:  # type: ignore[no-untyped-def]
    assert _key(cli) != _key(cli)


def test_keys_create_with_system_version(cli) -> None:  # type: ignore[no-untyped-def]
    ok(cli("keys", "create", "--user", "bob", "--name", "ci", "--system-version", "2"))
    # Setting it again through `users set` reports the current value.
    result = ok(cli("users", "set", "bob", "--system-version", "2"))
    assert "bob" in result.stdout
    assert "2" in result.stdout


def test_keys_list(cli) -> None:  # type: ignore[no-untyped-def]
    key = _key(cli)
    result = ok(cli("keys", "list"))
    row = _row(result.stdout, key[:10])
    assert "alice" in row
    assert row.rstrip().endswith("active")
    assert key not in result.stdout


def test_keys_list_when_empty(cli) -> None:  # type: ignore[no-untyped-def]
    result = ok(cli("keys", "list"))
    assert result.stdout == ""
    assert "no keys" in result.stderr


def test_keys_list_for_one_user(cli) -> None:  # type: ignore[no-untyped-def]
    ka = _key(cli, "alice")
    kb = _key(cli, "bob")
    result = ok(cli("keys", "list", "--user", "bob"))
    assert kb[:10] in result.stdout
    assert ka[:10] not in result.stdout


def test_keys_revoke_by_prefix(cli) -> None:  # type: ignore[no-untyped-def]
    key = _key(cli)
    spare = _key(cli)
    result = ok(cli("keys", "revoke", key[:10]))
    assert "revoked 1" in result.stdout
    listing = ok(cli("keys", "list")).stdout
    assert "revoked" in _row(listing, key[:10])
    assert _row(listing, spare[:10]).rstrip().endswith("active")


def test_keys_revoke_by_id(cli) -> None:  # type: ignore[no-untyped-def]
    key = _key(cli)
    key_id = _row(ok(cli("keys", "list")).stdout, key[:10]).split()[0]
    assert key_id.isdigit()
    ok(cli("keys", "revoke", key_id))
    assert "revoked" in _row(ok(cli("keys", "list")).stdout, key[:10])


def test_keys_revoke_twice(cli) -> None:  # type: ignore[no-untyped-def]
    key = _key(cli)
    ok(cli("keys", "revoke", key[:10]))
    line = failed_cleanly(cli("keys", "revoke", key[:10]))
    assert key[:10] in line


@pytest.mark.parametrize("unknown", ["olz_zzzzzz", "12345", "not-a-key"])
def test_keys_revoke_unknown(cli, unknown: str) -> None:  # type: ignore[no-untyped-def]
    _key(cli)
    failed_cleanly(cli("keys", "revoke", unknown))
    # Nothing was revoked.
    assert "revoked" not in ok(cli("keys", "list")).stdout


def test_users_set(cli) -> None:  # type: ignore[no-untyped-def]
    _key(cli)
    result = ok(cli("users", "set", "alice", "--system-version", "2"))
    assert result.stdout.strip() == "alice: default systemVersion 2"
    result = ok(cli("users", "set", "alice", "--system-version", "3"))
    assert result.stdout.strip() == "alice: default systemVersion 3"


def test_users_set_unknown_user(cli) -> None:  # type: ignore[no-untyped-def]
    line = failed_cleanly(cli("users", "set", "nobody", "--system-version", "2"))
    assert "nobody" in line


@pytest.mark.parametrize(
    "args",
    [
        ("users", "set", "alice", "--system-version", "4"),
        ("keys", "create", "--user", "alice", "--system-version", "4"),
        ("users", "set", "alice"),
        ("keys", "create"),
    ],
)
def test_bad_usage_is_rejected_by_click(cli, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    result = cli(*args)
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert "Error" in result.stderr


def test_invalid_system_version_changes_nothing(cli) -> None:  # type: ignore[no-untyped-def]
    _key(cli)
    assert cli("users", "set", "alice", "--system-version", "4").exit_code == 2
    # The user keeps the default; setting 3 reports 3.
    assert ok(cli("users", "set", "alice", "--system-version", "3")).stdout.strip().endswith("3")


def test_migrate(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from alembic.script import ScriptDirectory

    from openletz.db import _alembic_config

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    result = ok(cli("migrate"))
    assert result.stdout.strip() == f"database at revision {head}"
    assert (tmp_path / "data" / "openletz.db").exists()
    # Twice is fine.
    assert ok(cli("migrate")).stdout.strip() == f"database at revision {head}"


def test_version(cli) -> None:  # type: ignore[no-untyped-def]
    result = ok(cli("--version"))
    assert __version__ in result.stdout


def test_help(cli) -> None:  # type: ignore[no-untyped-def]
    result = ok(cli("--help"))
    for command in ("serve", "keys", "users", "migrate"):
        assert command in result.stdout


def test_invalid_settings_fail_cleanly(cli, env: dict[str, str | None]) -> None:  # type: ignore[no-untyped-def]
    env["OPENLETZ_WORKERS"] = "0"
    line = failed_cleanly(cli("keys", "list"))
    assert "invalid settings" in line
