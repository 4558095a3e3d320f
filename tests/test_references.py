"""Citations a reader can follow: the code, tests and contract cite the repository's own
documents (``docs/profile.md`` sections, ``docs/*.md``) and public specifications only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import REPO

CITING = ["python", "rust", "tests", "protos", "loadtest", "docs", "README.md"]
SUFFIXES = {".py", ".pyi", ".rs", ".proto", ".md", ".toml"}
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)[. ]", re.MULTILINE)
SECTION = re.compile(r"§ ?(\d+(?:\.\d+)*)")
#: A § that follows one of these on its line cites that document, not the profile.
OTHER_DOCUMENT = re.compile(
    r"(RFC ?\d+|draft|Token Status List|RNIV|Principes communs|ISO|FIPS|SEC ?1|CDDL|RG_BS\d+)"
    r"[^§;()]{0,40}$"
)
#: Documents that are not in the repository, issue numbers in names, absolute paths.
OUTSIDE = re.compile(
    r"STYLE\.md|ARCHITECTURE\.md|PROFILE\.md|PROFILE §|contract\.md|contract \"|"
    r"shared/design|/work/|\bissue \d+\b|\bissue_\d+|_issue\d+"
)


def _files() -> list[Path]:
    found: list[Path] = []
    for name in CITING:
        path = REPO / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        found += [p for p in candidates if p.suffix in SUFFIXES and "_proto" not in p.parts]
    return [p for p in found if p.name != Path(__file__).name]


def profile_sections() -> set[str]:
    return set(HEADING.findall((REPO / "docs" / "profile.md").read_text()))


def profile_citations(text: str) -> list[str]:
    """The ``§x.y`` of ``text`` that cite docs/profile.md (not an RFC, draft or standard)."""
    cited: list[str] = []
    for line in text.splitlines():
        for match in SECTION.finditer(line):
            if not OTHER_DOCUMENT.search(line[: match.start()]):
                cited.append(match.group(1))
    return cited


def test_the_heading_pattern_reads_the_profile() -> None:
    sections = profile_sections()
    assert {"1", "2.6", "6.1", "7.2", "7.4", "8", "8.1", "9.3"} <= sections


def test_citations_of_other_documents_are_told_apart() -> None:
    line = "RFC 9052 §4.4 and draft §4.1, then the profile's §7.2 (see also docs/profile.md §9)"
    assert profile_citations(line) == ["7.2", "9"]


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_profile_section_cited_exists(path: Path) -> None:
    missing = sorted(set(profile_citations(path.read_text())) - profile_sections())
    assert missing == [], f"{path.relative_to(REPO)} cites sections docs/profile.md lacks"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_outside_the_repository_is_cited(path: Path) -> None:
    lines = path.read_text().splitlines()
    outside = [f"{n}: {line.strip()}" for n, line in enumerate(lines, 1) if OUTSIDE.search(line)]
    assert outside == []
