"""Every relative link of the README and the docs pages reaches a file, and every #anchor a heading of it: a page
moved or a heading renamed cannot leave a reader at a dead link."""
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """GitHub's id of a heading: lower case, punctuation dropped (letters, digits, spaces, - and _ kept), spaces
    to hyphens."""
    text = re.sub(r"`|\*\*?|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)} | \
        set(re.findall(r'<a (?:name|id)="([^"]+)"', text))


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_anchor_rule_is_githubs():
    assert github_anchor("Data, paths and defaults") == "data-paths-and-defaults"
    assert github_anchor("7. BatchNorm and LayerNorm condition the last layer's input") == \
        "7-batchnorm-and-layernorm-condition-the-last-layers-input"
    assert github_anchor("Curvature: κ(H) in p and κ(PᵀHP) in z") == "curvature-κh-in-p-and-κpᵀhp-in-z"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_its_heading(page):
    dead = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            dead.append(f"{target} (no file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            dead.append(f"{target} (no heading)")
    assert dead == []
