"""The README is the front door and docs/ holds one page per topic: the README stays
short and names the two commands, every page is reachable from it, and every relative
link (with its ``#anchor``) in README.md and docs/*.md points at a file and a heading
that exist."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)")
#: An inline link or image ``[text](target)`` / ``![alt](target "title")``.
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def heading_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation other
    than ``-`` and ``_`` removed, spaces turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = text.strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in {"L", "N"})
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown page (repeated headings get ``-1``, ``-2``)."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = heading_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link that is not to a URL or an e-mail address."""
    text = path.read_text(encoding="utf-8")
    found = []
    for number, line in _prose_lines(text):
        for target in _LINK.findall(re.sub(r"`[^`]*`", "``", line)):  # not in code spans
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, file:
                continue
            found.append((number, target))
    return found


def test_readme_is_short_and_names_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "make demo" in text and "make test" in text


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (README.parent / target.split("#", 1)[0]).resolve() for _, target in relative_links(README)
    }
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    problems = []
    for number, target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not linked.exists():
            problems.append(f"{where}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: no heading with anchor #{anchor}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Five minutes with one study", "five-minutes-with-one-study"),
        ("`bench_viewer`", "bench_viewer"),
        (
            "Causal reliance on evidence (attention masking)",
            "causal-reliance-on-evidence-attention-masking",
        ),
        ("Conflict dose, override and reliance", "conflict-dose-override-and-reliance"),
        (
            "Max-context's packing order: `max_context.order`",
            "max-contexts-packing-order-max_contextorder",
        ),
        (
            "The prefix cache (`safescale/models/prefix_cache.py`)",
            "the-prefix-cache-safescalemodelsprefix_cachepy",
        ),
    ],
)
def test_heading_slug_follows_github(heading: str, slug: str) -> None:
    assert heading_slug(heading) == slug


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Top\n\n## Real heading\n", encoding="utf-8")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#real-heading) [bad anchor](a.md#nope) [gone](missing.md)\n"
        "```\n[in code](ignored.md)\n```\n[web](https://example.org/x.md)\n",
        encoding="utf-8",
    )
    targets = [t for _, t in relative_links(page)]
    assert targets == ["a.md#real-heading", "a.md#nope", "missing.md"]
    assert anchors(tmp_path / "a.md") == {"top", "real-heading"}
