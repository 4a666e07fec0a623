"""The documentation site builds with warnings as errors (``mkdocs build --strict``).

Needs the ``docs`` extra (mkdocs, mkdocs-material, mkdocstrings[python]); skipped without mkdocs.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def nav_pages(nav) -> list[str]:
    """Every page path listed in mkdocs.yml's nav."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in nav_pages(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in nav_pages(value)]
    return []


def load_config() -> dict:
    # mkdocs.yml may hold !!python/name tags in other setups: none here, safe_load must work
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def test_every_page_is_in_the_nav_and_exists():
    listed = set(nav_pages(load_config()["nav"]))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert listed <= on_disk, f"nav lists missing pages: {sorted(listed - on_disk)}"
    assert on_disk <= listed, f"pages left out of the nav: {sorted(on_disk - listed)}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed")
def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    callback = (site / "reference" / "callback" / "index.html").read_text(encoding="utf-8")
    assert "OnlineHyperparamCallback" in callback
    assert "λ ← λ − α ⟨g_V, y⟩" in callback  # the docstrings' Unicode symbols come through
    assert (site / "img" / "quickstart_tensorboard.png").is_file()
    for page in nav_pages(load_config()["nav"]):
        html = site / page.removesuffix(".md").removesuffix("index") / "index.html"
        assert html.is_file(), f"{page} was not built"
