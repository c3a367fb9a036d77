"""The checkout CI builds from must hold every source file: none may be git-ignored."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_source_file_is_git_ignored():
    # benchmarks/: the scripts and RESULTS.md, not benchmarks/out (run outputs, ignored on purpose).
    files = [p for folder in ("src", "tests", "configs", "scripts") for p in (ROOT / folder).rglob("*")]
    files += list((ROOT / "benchmarks").glob("*"))
    sources = [str(p.relative_to(ROOT)) for p in files if p.is_file() and "__pycache__" not in p.parts
               and p.suffix in (".py", ".yaml", ".sh", ".md")]
    done = subprocess.run(["git", "check-ignore", "--no-index", *sources], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == [], f"git-ignored sources would be missing from a clean checkout: {done.stdout}"
