"""The commit a result records: the project's own, never an enclosing repository's."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ccnbench import environment

PACKAGE = Path(environment.__file__).resolve().parent
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _repo_with_a_copy(tmp_path: Path) -> tuple[Path, str]:
    """Someone else's repository (one commit) holding a copy of the project without its .git."""
    outer = tmp_path / "outer"
    project = outer / "vendor" / "ccnbench-copy"
    shutil.copytree(PACKAGE, project / "ccnbench", ignore=shutil.ignore_patterns("__pycache__"))
    _git(outer, "init", "-q")
    _git(outer, "add", "-A")
    _git(outer, "commit", "-qm", "theirs")
    return project, _git(outer, "rev-parse", "--short=12", "HEAD").strip()


def _recorded_commit(project: Path, variable: str | None) -> str:
    """What the copied package records, run as the copy (its own environment.py, its own root)."""
    env = {k: v for k, v in os.environ.items() if k != environment.GIT_COMMIT_VARIABLE}
    env["PYTHONPATH"] = str(project)
    if variable is not None:
        env[environment.GIT_COMMIT_VARIABLE] = variable
    code = "from ccnbench import environment as e; print(e.__file__); print(e._git_commit())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True, check=True
    )
    where, commit = out.stdout.split()
    assert Path(where).is_relative_to(project)  # the copy ran, not this checkout
    return commit


def test_a_copy_inside_another_repository_does_not_report_that_repositorys_commit(tmp_path):
    project, theirs = _repo_with_a_copy(tmp_path)
    assert _recorded_commit(project, None) == "unknown"
    assert _recorded_commit(project, "0123abcd4567") == "0123abcd4567"  # the caller names it
    assert theirs not in (_recorded_commit(project, None), _recorded_commit(project, "0123abcd4567"))


def test_the_projects_own_work_tree_reports_its_commit_whatever_the_variable_says(tmp_path, monkeypatch):
    project, _ = _repo_with_a_copy(tmp_path)
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "ours")
    ours = _git(project, "rev-parse", "--short=12", "HEAD").strip()
    monkeypatch.setenv(environment.GIT_COMMIT_VARIABLE, "somebody-else")
    assert environment._git_commit(project) == ours
    (project / "ccnbench" / "__init__.py").write_text("# edited\n")
    assert environment._git_commit(project) == f"{ours}-dirty"
