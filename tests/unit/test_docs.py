"""The README and docs/ stay navigable: relative links resolve, anchors match headings.

Standard library only (no network, no project imports): links are read from the Markdown source,
headings are turned into anchors with GitHub's slug rules, and the README keeps the test commands
that CI runs (`.ci/run`) and stays one or two screens long.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Generated from the config schema by `raydefense config --schema`; it may not exist yet.
OPTIONAL_TARGETS = {DOCS / "config-reference.md"}
README_MAX_BYTES = 12_000

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) or [text](target "title"); images ![alt](src) too. Text may hold nested [..].
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) for the lines outside fenced code blocks."""
    lines = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker[0] * len(marker)
                continue
            if marker.startswith(fence):
                fence = None
                continue
        if fence is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lowercased, punctuation dropped
    (letters, digits, `_`, `-` and spaces stay), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub generates for `path` (duplicates get -1, -2, ...), plus <a id=...>."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in outside_fences(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in outside_fences(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):  # no links inside code spans
            found.append((number, match.group(1)))
    return found


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    rel = path.relative_to(root)
    for number, target in links(path):
        if is_external(target):  # http(s):, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        file_part = file_part.split("?", 1)[0]
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{rel}:{number}: [{target}]"
        if not dest.exists():
            if dest in OPTIONAL_TARGETS:
                continue
            shown = dest.relative_to(root) if dest.is_relative_to(root) else dest
            problems.append(f"{where}: {shown} does not exist")
            continue
        if anchor and dest.suffix == ".md" and dest.is_file():
            if anchor.lower() not in {a.lower() for a in anchors(dest)}:
                shown = dest.relative_to(root) if dest.is_relative_to(root) else dest
                problems.append(f"{where}: no heading with anchor #{anchor} in {shown}")
    return problems


def test_docs_exist():
    assert README.is_file()
    assert (DOCS / "index.md").is_file()


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_pages_start_with_a_title(path: Path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# "), f"{path.name} must start with a '# Title' line, not {first!r}"


def test_every_docs_page_is_reachable_from_the_readme_or_index():
    linked = set()
    for path in (README, DOCS / "index.md"):
        for _, target in links(path):
            if not is_external(target):
                linked.add((path.parent / target.partition("#")[0]).resolve())
    orphans = [
        p.name
        for p in sorted(DOCS.glob("*.md"))
        if p.name != "index.md" and p.resolve() not in linked
    ]
    assert not orphans, f"docs pages linked from neither README.md nor docs/index.md: {orphans}"


def test_readme_is_short():
    size = README.stat().st_size
    assert size < README_MAX_BYTES, (
        f"README.md is {size} bytes (limit {README_MAX_BYTES}): move detail into docs/"
    )


@pytest.mark.parametrize("command", ["python -m pytest -q", "python -m pytest -q -m slow"])
def test_readme_keeps_the_ci_test_commands(command: str):
    # .ci/run runs these; the README documents them next to their times.
    text = README.read_text(encoding="utf-8")
    assert re.search(re.escape(command) + r"(?=`|$)", text, re.MULTILINE), command


def test_slug_follows_github_rules():
    assert slug("Storage: a local folder or S3") == "storage-a-local-folder-or-s3"
    assert slug("What `raydefense run` does") == "what-raydefense-run-does"
    assert slug("Training sweeps (`sweep.kind=training`)") == "training-sweeps-sweepkindtraining"
    assert slug("Training-seed study") == "training-seed-study"
    assert slug("A [linked](x.md) heading") == "a-linked-heading"


def test_checker_reports_broken_links(tmp_path: Path):
    (tmp_path / "b.md").write_text("# Real heading\n\n## Second one\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text(
        "# A\n\n[ok](b.md#second-one) [self](#a) [web](https://example.com)\n"
        "[gone](missing.md) [bad anchor](b.md#nope) [bad self](#zzz)\n"
        "```\n[in code](nowhere.md)\n```\n`[inline](nowhere.md)`\n",
        encoding="utf-8",
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 3, problems
    assert "missing.md does not exist" in problems[0]
    assert "#nope" in problems[1] and "#zzz" in problems[2]
