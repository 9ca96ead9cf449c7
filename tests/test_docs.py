"""The project documents itself: every link in README.md and docs/ reaches a file (and a
heading) of this repository, every docs page is reachable from the index, and no tracked
file points outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercased, punctuation dropped, spaces to dashes."""
    found = set()
    for line in page.read_text().splitlines():
        m = re.match(r"^#+\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)    # not inside code blocks
    return [m.group(1) for m in LINK.finditer(text)]


def test_every_relative_link_reaches_a_file_and_heading_of_the_repository():
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if ROOT not in dest.parents and dest != ROOT:
                broken.append(f"{page.name}: {target} leaves the repository")
            elif not dest.exists():
                broken.append(f"{page.name}: {target} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} names no heading")
    assert broken == []


def test_every_docs_page_is_in_the_index_and_the_readme():
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages <= set(links(ROOT / "docs" / "index.md"))
    readme = {Path(t).name for t in links(ROOT / "README.md") if t.startswith("docs/")}
    assert pages <= readme


def test_no_tracked_file_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    outside = re.compile(r"\.\./shared|PRODUCT\.md|kumomta-facts|/work/")
    hits = [f for f in files if (ROOT / f).is_file() and f != "tests/test_docs.py"
            and outside.search((ROOT / f).read_text(errors="replace"))]
    assert hits == []
