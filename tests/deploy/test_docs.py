"""The docs name only real profiles, services, files, variables and pages.

Each `docker compose` command in the README and docs/ is checked against docker-compose.yml
without an engine (test_compose_stack.py runs the README's marked blocks for real), and every
relative link in them resolves to a file of this repository, and its `#anchor` to a heading.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.project import CLIENT_VARIABLES, DESIGN_VARIABLES, PROJECT_ROOT, load_compose

README_PATH = PROJECT_ROOT / "README.md"
DOCUMENTS = (README_PATH, *sorted((PROJECT_ROOT / "docs").glob("*.md")))
# [text](target) outside code; images too. Absolute URLs and mailto: are not checked here.
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN_OR_BLOCK = re.compile(r"```.*?```|`[^`\n]*`", re.S)
# Options of `docker compose` and its subcommands that take a value.
OPTIONS_WITH_VALUE = {"--profile", "-f", "--file", "-p", "--project-name", "-e", "--env"}
SUBCOMMANDS_OF_SERVICES = {"up", "build", "logs", "ps", "pull", "stop", "start", "restart"}
SUBCOMMANDS_OF_ONE_SERVICE = {"run", "exec"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&"}


def compose_commands(text: str) -> list[list[str]]:
    """Every `docker compose ...` command, continuation lines joined, env assignments,
    trailing comments and whatever follows a pipe or `&&` dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for match in re.finditer(r"(?:`|^)((?:[A-Z_]+=\S+\s+)*docker compose [^`\n]*)", joined, re.M):
        lexer = shlex.shlex(match.group(1), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(itertools.takewhile(lambda word: word not in SHELL_OPERATORS, lexer))
        while "=" in words[0]:
            words.pop(0)
        commands.append(words[2:])
    return commands


def documents() -> list[Path]:
    return [path for path in DOCUMENTS if path.exists() and "docker compose" in path.read_text()]


def check_command(words: list[str], compose: dict[str, Any]) -> None:
    profiles = {profile for s in compose["services"].values() for profile in s.get("profiles", [])}
    index = 0
    subcommand = None
    named: list[str] = []
    while index < len(words):
        word = words[index]
        if word in OPTIONS_WITH_VALUE:
            if word == "--profile":
                assert words[index + 1] in profiles, f"no profile {words[index + 1]}"
            index += 2
            continue
        if word.startswith("-"):
            index += 1
            continue
        if subcommand is None:
            subcommand = word
        else:
            named.append(word)
            if subcommand in SUBCOMMANDS_OF_ONE_SERVICE:
                break
        index += 1
    assert subcommand is not None
    if subcommand in SUBCOMMANDS_OF_SERVICES | SUBCOMMANDS_OF_ONE_SERVICE:
        for service in named:
            assert service in compose["services"], f"no service {service}"
    trailing = words[index + 1 :] if subcommand in SUBCOMMANDS_OF_ONE_SERVICE else []
    if "-f" in trailing:
        locustfile = trailing[trailing.index("-f") + 1]
        assert (PROJECT_ROOT / locustfile).is_file(), locustfile


def test_docs_exist_and_show_compose_commands() -> None:
    """The README's deployment section is there and shows the compose commands."""
    assert README_PATH in documents()
    assert len(compose_commands(README_PATH.read_text())) >= 5


@pytest.mark.parametrize("path", documents(), ids=lambda path: path.name)
def test_compose_commands_name_real_profiles_and_services(path: Path) -> None:
    """Each --profile is a profile, each named service a service, each locustfile a file."""
    compose = load_compose()
    for words in compose_commands(path.read_text()):
        check_command(words, compose)


@pytest.mark.parametrize("path", documents(), ids=lambda path: path.name)
def test_documented_variables_exist(path: Path) -> None:
    """Every BANK_* the docs mention is a service setting, or the load tools' or tests' own."""
    mentioned = set(re.findall(r"\bBANK_[A-Z_]+\b", path.read_text()))
    assert mentioned - CLIENT_VARIABLES <= DESIGN_VARIABLES


def test_checker_refuses_unknown_profiles_and_services() -> None:
    """The checker itself can fail."""
    compose = load_compose()
    with pytest.raises(AssertionError):
        check_command(["--profile", "scaled", "up"], compose)
    with pytest.raises(AssertionError):
        check_command(["--profile", "scale", "up", "api-3"], compose)
    with pytest.raises(AssertionError):
        check_command(["run", "--rm", "locust-master", "locust", "-f", "loadtest/nope.py"], compose)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped,
    spaces to hyphens, a repeated heading suffixed -1, -2, ..."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", CODE_SPAN_OR_BLOCK.sub(fence_marker, text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, count = slug, 0
        while candidate in anchors:
            count += 1
            candidate = f"{slug}-{count}"
        anchors.add(candidate)
    return anchors


def fence_marker(match: re.Match[str]) -> str:
    """A code block hides its `#` lines from the heading scan; a code span keeps its text."""
    text = match.group(0)
    return "" if text.startswith("```") else text.strip("`")


def broken_links(path: Path, root: Path = PROJECT_ROOT) -> list[str]:
    """Each relative link of `path` whose file (inside `root`), or `#anchor` in it, does not
    exist."""
    text = path.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    broken = []
    for target in MARKDOWN_LINK.findall(re.sub(r"`[^`\n]*`", "", prose)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.is_relative_to(root) or not linked.exists():
            broken.append(f"{target}: no such file in the repository")
        elif (
            anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text())
        ):
            broken.append(f"{target}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_resolves(path: Path) -> None:
    """Every relative link in the README and docs/ names a file of this repository (nothing
    points outside it) and, with an #anchor, a heading of that file."""
    assert not broken_links(path)


def test_the_docs_point_to_no_file_outside_the_repository() -> None:
    """The contract is docs/contract.md: no page sends the reader to a DESIGN.md it cannot
    open (the file lived in a folder outside the repository)."""
    mentions = [path.name for path in DOCUMENTS if "DESIGN.md" in path.read_text()]
    assert not mentions


def test_the_link_checker_can_fail(tmp_path: Path) -> None:
    """A missing file and a missing anchor are both reported."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[a](page.md#title) [b](nope.md) [c](page.md#nope)\n")
    assert heading_anchors(page.read_text()) == {"title"}
    problems = broken_links(page, root=tmp_path)
    assert any("nope.md" in problem for problem in problems)
    assert any("#nope" in problem for problem in problems)
    assert not any("#title" in problem for problem in problems)
