"""The README's commands work as written, against a real server (so the README cannot rot).

Blocks marked `<!-- readme-test: NAME -->` are run with bash, line by line,
with `$BANK` pointing at a server this test started; a `make run` line names
the settings of the server to start instead of being run. A `# → ` line under
a command shows what it prints: the test compares the answer with it, all but
the fields named in VARYING_FIELDS.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import ServerProcess, clean_environment

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
ADMIN_TOKEN = "readme-admin-token"
# What the README shows under a curl line: the JSON it prints, on a line of its own.
SHOWN_PREFIX = "# → "
# The only fields a shown answer may differ in: when it was made. (The request id is a
# header, which the examples do not print; ids, versions and balances are the same on
# every fresh database.)
VARYING_FIELDS = frozenset({"created_at", "updated_at"})
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def block_lines(name: str) -> list[str]:
    text = README.read_text()
    match = re.search(rf"<!-- readme-test: {name} -->\n```sh\n(.*?)```", text, re.S)
    assert match, f"README has no block marked readme-test: {name}"
    return match.group(1).splitlines()


def readme_block(name: str) -> list[str]:
    """The block's commands, without comments (and so without the outputs shown)."""
    return [line for line in block_lines(name) if line and not line.startswith("#")]


def run_bash(script: str, base_url: str) -> str:
    environment = clean_environment({"BANK": base_url, "BANK_ADMIN_TOKEN": ADMIN_TOKEN})
    completed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, f"{script}\n{completed.stderr}"
    return completed.stdout


def json_of(output: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(output)
    return parsed


def server_settings(make_run_line: str) -> dict[str, str]:
    words = shlex.split(make_run_line.split("#")[0])
    return dict(word.split("=", 1) for word in words if "=" in word)


def start(tmp_path: Path, **settings: str) -> ServerProcess:
    return ServerProcess(
        workdir=tmp_path,
        settings={
            "BANK_DATABASE_URL": f"sqlite:///{tmp_path}/bank.db",
            "BANK_ADMIN_TOKEN": ADMIN_TOKEN,
            **settings,
        },
    ).start()


def readme_examples(name: str) -> list[tuple[str, str | None]]:
    """The block's commands, each with the output the README shows under it (None: none)."""
    examples: list[tuple[str, str | None]] = []
    for line in block_lines(name):
        if line.startswith(SHOWN_PREFIX):
            assert examples and examples[-1][1] is None, f"output under no command: {line}"
            examples[-1] = (examples[-1][0], line.removeprefix(SHOWN_PREFIX))
        elif line and not line.startswith("#"):
            examples.append((line, None))
    return examples


def masked(value: Any) -> Any:
    """`value` with every VARYING_FIELDS value (an RFC 3339 UTC time) replaced by a marker."""
    if isinstance(value, list):
        return [masked(item) for item in value]
    if not isinstance(value, dict):
        return value
    for key in VARYING_FIELDS & value.keys():
        assert TIMESTAMP.fullmatch(str(value[key])), f"{key}: {value[key]!r}"
    return {
        key: "<varies>" if key in VARYING_FIELDS else masked(item) for key, item in value.items()
    }


def canonical(output: str) -> str:
    """The JSON answer, masked, keys sorted; 1, 1.0 and true stay distinct."""
    return json.dumps(masked(json.loads(output)), sort_keys=True)


def test_every_curl_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    """Each curl line of the usage and admin blocks prints the JSON shown under it (timestamps
    aside), on a fresh database."""
    examples = [
        (command, shown)
        for command, shown in readme_examples("curl") + readme_examples("admin")
        if not command.startswith("BANK=")
    ]
    unshown = [command for command, shown in examples if shown is None]
    assert not unshown, f"the README shows no output under {unshown}"
    server = start(tmp_path)
    try:
        printed = [run_bash(command, server.url) for command, _shown in examples]
    finally:
        server.stop()
    differences = [
        f"{command}\n  README shows: {shown}\n  it prints:   {output.strip()}"
        for (command, shown), output in zip(examples, printed, strict=True)
        if canonical(output) != canonical(str(shown))
    ]
    assert not differences, "\n".join(differences)
    lines = [command for command, _shown in examples]
    outputs = [json_of(output) for output in printed]
    by_line = dict(zip(lines, outputs, strict=True))
    admin = outputs[-1]
    assert all(isinstance(output, dict) for output in outputs)
    codes = [output.get("code") for output in outputs]
    assert codes.count("insufficient_funds") == 1 and codes.count("validation_error") == 1
    assert sum(1 for output in outputs if "status" in output and "code" in output) == 2
    audits = [output for line, output in by_line.items() if line.endswith("/audit")]
    assert audits and all(audit["consistent"] is True for audit in audits)
    account = next(output for line, output in by_line.items() if line.endswith("/accounts/1"))
    assert account["balance"] == 10000
    assert admin["lock_mode"] == "atomic" and admin["race_window_ms"] == 0


@pytest.mark.parametrize("documented", [True, False], ids=["unlocked-as-documented", "locked"])
def test_race_demo_loses_money_unlocked_and_not_locked(tmp_path: Path, documented: bool) -> None:
    """The README's race demo shows drift when unlocked, and none in the default locked mode."""
    lines = readme_block("race")
    make_run = next(line for line in lines if "make run" in line)
    settings = server_settings(make_run) if documented else {}
    server = start(tmp_path, **settings)
    try:
        output = run_bash("\n".join(line for line in lines if line != make_run), server.url)
    finally:
        server.stop()
    audit = json_of(output.strip().splitlines()[-1])
    assert audit["journal_balance"] == 2000
    if documented:
        print(f"README race demo, unlocked: balance {audit['balance']} of 2000")
        assert audit["drift"] < 0 and audit["consistent"] is False
    else:
        assert audit["balance"] == 2000 and audit["consistent"] is True


def test_the_idempotency_example_moves_the_money_once(tmp_path: Path) -> None:
    """The README's retry with a key: the second answer is the first, replayed; 700 moved once."""
    server = start(tmp_path)
    try:
        run_bash(
            "curl -s -X POST $BANK/accounts -H 'Content-Type: application/json' "
            '-d \'{"owner": "alice"}\'',
            server.url,
        )
        output = run_bash("\n".join(readme_block("idempotency")), server.url)
        account = json_of(run_bash("curl -s $BANK/accounts/1", server.url))
    finally:
        server.stop()
    first, _, replay = output.partition("HTTP/1.1 201")
    headers, _, replayed_body = replay.partition("\n\n")  # text mode: CRLF read as LF
    assert "Idempotent-Replayed: true" in headers
    assert json_of(first) == json_of(replayed_body)
    assert json_of(first)["amount"] == 700
    assert account["balance"] == 700
