"""Why bandit's B101 (assert) can stay off: no assert in service/ or loadtest/ checks a rule.

`python -O` strips asserts, so a rule of money that must hold in production
raises instead (STYLE: "money invariants use explicit raise"). An assert is
only for mypy: `x is not None` or `isinstance(x, T)`. A new assert of any
other kind fails here; make it a raise, or explain it and mark it `# nosec B101`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHECKED_PACKAGES = ("service", "loadtest")


def narrows_a_type(test: ast.expr) -> bool:
    """`x is not None` (x a name or attribute) or `isinstance(...)`."""
    if isinstance(test, ast.Compare):
        return (
            len(test.ops) == 1
            and isinstance(test.ops[0], ast.IsNot)
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value is None
            and isinstance(test.left, ast.Name | ast.Attribute)
        )
    return (
        isinstance(test, ast.Call)
        and isinstance(test.func, ast.Name)
        and test.func.id == "isinstance"
    )


def asserts(source: str) -> list[ast.Assert]:
    return [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assert)]


@pytest.mark.parametrize(
    ("source", "narrowing"),
    [
        ("assert held is not None", True),
        ("assert self.process is not None", True),
        ("assert isinstance(runner, MasterRunner)", True),
        ("assert balance >= 0", False),
        ("assert held is not None and held.balance > 0", False),
        ("assert held", False),
        ("assert f() is not None", False),
    ],
)
def test_the_rule_tells_narrowing_from_checking(source: str, narrowing: bool) -> None:
    """The shape test itself: only the two narrowing forms pass."""
    (node,) = asserts(source)
    assert narrows_a_type(node.test) is narrowing


def test_every_assert_in_the_shipped_code_only_narrows_a_type() -> None:
    """No assert in service/ or loadtest/ checks a value that matters at run time."""
    found = 0
    offenders = []
    for package in CHECKED_PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            text = path.read_text()
            for node in asserts(text):
                found += 1
                line = text.splitlines()[node.lineno - 1]
                if not narrows_a_type(node.test) and "nosec B101" not in line:
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert found > 0
    assert offenders == []
