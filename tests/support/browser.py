"""Debian's Chromium for the browser tests, driven by Playwright (no browser download here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.components import missing

CHROMIUM = Path("/usr/bin/chromium")


def launch_chromium(playwright: Any) -> Any:
    """Headless /usr/bin/chromium; skipped when it is missing, a failure under CI."""
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing: apt-get install chromium")
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
    )
