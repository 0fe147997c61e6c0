"""The README and docs/: their `ccnbench` commands run as written (in a scratch copy of results/
and tests/fixtures/), the README stays a guide (short, short paragraphs), and links resolve."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ccnbench.cli import app

from helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_WORDS = 3000
PARAGRAPH_WORDS = 150

# Commands the tests do not run, and why. Every other `ccnbench` line of a bash block runs here.
NOT_RUN = {
    "--config cpu-default": "the full default sweep takes minutes; CI's gate runs ci-quick",
    "--resume results/2026": "a placeholder run directory",
    "mypackage": "a placeholder for the reader's own package",
    "my_model.onnx": "a placeholder for the reader's own file",
    "my_ckpt.pt": "a placeholder for the reader's checkpoint: tests/training/test_checkpoint.py runs the route",
    "my_merged.pt": "a placeholder for the reader's merged weights: tests/training/test_checkpoint.py runs it",
    "train-bench --preset small": "minutes of cold torch.compile: tests/training/test_bench.py runs it at tiny",
}


def page_commands(page: Path) -> list[str]:
    """The `ccnbench` lines of a page's bash blocks, without their trailing comments."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("ccnbench "):
                commands.append(line)
    return commands


def all_commands() -> list[tuple[str, str]]:
    return [(str(page.relative_to(ROOT)), c) for page in PAGES for c in page_commands(page)]


def prose(text: str) -> str:
    """The text without fenced code blocks, tables and headings."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("|", "#")))


def paragraphs(text: str) -> list[str]:
    """Blocks separated by blank lines; each list item counts as a paragraph of its own."""
    out = []
    for block in re.split(r"\n\s*\n", prose(text)):
        out += [p for p in re.split(r"\n(?=\s*(?:[-*]|\d+\.) )", block) if p.strip()]
    return out


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_pages_include_the_docs():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    for topic in ("measurement", "ci", "gpu", "merging", "formats", "training"):
        assert f"docs/{topic}.md" in names


def test_every_cli_command_has_an_example():
    names = set(typer.main.get_command(app).commands)
    shown = {c.split()[1] for _, c in all_commands()}
    assert names - shown == set(), "commands without an example in the README or docs/"


def test_every_skip_names_a_command_it_skips():
    commands = [c for _, c in all_commands()]
    unused = [pattern for pattern in NOT_RUN if not any(pattern in c for c in commands)]
    assert not unused, "NOT_RUN entries that match no command (remove them)"


def test_readme_is_a_guide():
    text = (ROOT / "README.md").read_text()
    words = len(text.split())
    assert words <= README_WORDS, f"README.md has {words} words; the methodology belongs in docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_paragraphs_are_short(page):
    long = [p for p in paragraphs(page.read_text()) if len(p.split()) > PARAGRAPH_WORDS]
    assert not long, f"{len(long)} paragraph(s) over {PARAGRAPH_WORDS} words, the first: {long[0][:120]}..."


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{target} does not exist"
        assert ROOT in resolved.parents or resolved == ROOT, f"{target} points outside the project"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{target}: no heading with that anchor"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_pages_stand_on_their_own(page):
    assert "../shared" not in page.read_text(), "a user's checkout has nothing outside the project"


@pytest.mark.slow
@pytest.mark.usefixtures("quick_is_one_process")  # runs as written; test_sweep times real contests
@pytest.mark.parametrize(("page", "command"), all_commands())
def test_command_runs(page, command, tmp_path, monkeypatch):
    skip = next((why for pattern, why in NOT_RUN.items() if pattern in command), None)
    if skip:
        pytest.skip(skip)
    shutil.copytree(ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns("logs"))
    shutil.copytree(ROOT / "tests" / "fixtures", tmp_path / "tests" / "fixtures")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    # compare exits 1 when it finds a regression; comparing a run with itself must pass.
    assert result.exit_code == 0, f"{page}: {command}\n{result.output}"
