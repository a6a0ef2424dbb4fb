"""Every link in the README and docs/ points inside the repository a user clones, and resolves.

A relative link must name a file or directory of this repository (not `../shared/...` beside
it), and a `#fragment` must name a heading of the page it points to (GitHub's anchor rules).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *ROOT.glob("*/README.md"),
                ROOT / "benchmarks" / "RESULTS.md"])
#: The contract lifeline was built to, when the checkout sits beside it (the CI and dev layout).
SOURCE_CONTRACT = ROOT.parent / "shared" / "CONTRACT.md"

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")


def links(text: str) -> list[str]:
    """The targets of the inline Markdown links in `text`, outside code blocks and code spans."""
    text = _FENCE.sub("", text)
    text = re.sub(r"\[(`[^`\n]*`)\]", lambda m: "[code]", text)  # [`x`](y): keep the link
    return _LINK.findall(_CODE.sub("", text))


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of `page`: lower case, punctuation dropped, spaces as `-`."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Every link of `page` (or of `text` placed at `page`) that leaves the repository or names nothing."""
    bad = []
    for target in links(page.read_text(encoding="utf-8") if text is None else text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.is_relative_to(ROOT):
            bad.append(f"{target}: points outside the repository ({dest})")
        elif not dest.exists():
            bad.append(f"{target}: no such file in the repository")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{target}: {dest.name} has no heading #{fragment}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    bad = broken_links(page)
    assert not bad, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(bad)


def test_the_readme_links_the_contract_in_the_repository() -> None:
    assert "docs/contract.md" in links((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_contract_copy_is_verbatim() -> None:
    """docs/contract.md is the external contract as fixed, below its explanatory header."""
    copy = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    header, _, body = copy.partition("-->\n\n")
    assert "fixed external contract, version 1" in header and body.startswith("# External contract, version 1")
    if SOURCE_CONTRACT.is_file():  # the checkout sits beside the contract it was built to
        assert body == SOURCE_CONTRACT.read_text(encoding="utf-8"), "docs/contract.md differs from the contract"


@pytest.mark.parametrize(("text", "expected"), [
    ("see [the contract](../shared/CONTRACT.md).", ["../shared/CONTRACT.md: points outside the repository"]),
    ("see [`docs/x.md`](docs/nope.md)", ["docs/nope.md: no such file in the repository"]),
    ("[a](docs/contract.md#no-such-heading)", ["docs/contract.md#no-such-heading: contract.md has no heading"]),
    ("[a](docs/contract.md#2-mqtt-topics-prefix-p-default-lifelinev1-configurable) "
     "[b](https://example.org/x) `[c](nope.md)`", []),
])
def test_the_check_finds_broken_links(text: str, expected: list[str]) -> None:
    found = broken_links(ROOT / "README.md", text)
    assert len(found) == len(expected) and all(f.startswith(e) for f, e in zip(found, expected)), found
