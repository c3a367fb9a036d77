"""Packaging: the checkout CI builds from must hold every source file (none may be git-ignored), and
the presets must ship inside the wheel, usable after a plain install."""
import os
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


def _run(command: list, cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(map(str, command))} failed ({done.returncode}):\n"
                                  f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}")
    return done


@pytest.mark.slow
def test_presets_ship_in_the_wheel(tmp_path: Path):
    """A plain (non-editable) install of the wheel runs ``selfsup pretrain -c simclr_cifar10`` from a
    folder without configs/: the presets come from inside the installed package."""
    import sys
    import sysconfig
    import zipfile

    from conftest import write_cifar

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                                                            "PYTHONSAFEPATH", "PYTHONNOUSERSITE")}
    env.update(OMP_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONNOUSERSITE="1", CUDA_VISIBLE_DEVICES="")
    env.pop("VIRTUAL_ENV", None)

    # Build from a clean copy of the sources: an in-tree build would write build/ and egg-info into
    # the shared checkout, and a stale egg-info/SOURCES.txt could smuggle in files package-data misses.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", wheels, source], tmp_path, env)
    built = sorted(wheels.glob("selfsup-*.whl"))
    assert len(built) == 1, built
    names = set(zipfile.ZipFile(built[0]).namelist())
    assert {"selfsup/configs/simclr_cifar10.yaml", "selfsup/configs/demo.yaml",
            "selfsup/reproduce/measured.json"} <= names, sorted(names)  # the claims' last measured verdicts

    # A fresh venv, the wheel installed into it (not editable) by this interpreter's pip: `pip --python`
    # spares the venv its own pip (ensurepip takes seconds).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python, selfsup = venv / "bin" / "python", venv / "bin" / "selfsup"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", built[0]],
         tmp_path, env)
    fresh_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           tmp_path, env).stdout.strip())
    # torch & co. come from this interpreter's site-packages, named in a .pth file. Its editable
    # selfsup does not shadow the wheel: a path line of a .pth is appended to sys.path after the
    # venv's own site-packages, and the .pth files inside that appended folder (the editable
    # install's, which puts src/ on sys.path) are not processed. Checked below, not assumed.
    outer_site = sysconfig.get_paths()["purelib"]
    (fresh_site / "outer_dependencies.pth").write_text(outer_site + "\n")
    where = _run([python, "-c", "import selfsup; print(selfsup.__file__)"], tmp_path, env).stdout.strip()
    assert Path(where).resolve().is_relative_to(fresh_site.resolve()), where
    assert Path(where).resolve().parent.joinpath("configs", "simclr_cifar10.yaml").is_file()

    # tmp_path has no configs/ folder: the preset can only come from the installed package.
    assert not (tmp_path / "configs").exists()
    listed = _run([selfsup, "pretrain", "--list-methods"], tmp_path, env).stdout
    assert "simclr_cifar10" in listed, listed
    claims = _run([selfsup, "reproduce", "--list", "--out", tmp_path / "none"], tmp_path, env).stdout
    assert "lwf-vs-finetune" in claims, claims
    shown = _run([selfsup, "pretrain", "-c", "simclr_cifar10", "--print-config", "--set", "optim.lr=0.7"],
                 tmp_path, env).stdout
    for expected in ("name: simclr", "lr: 0.7", "cifar10"):
        assert expected in shown, shown

    data = write_cifar(tmp_path / "c10", "cifar10", train=40, test=10)
    run_dir = tmp_path / "run"
    settings = {"data.root": data, "train.batch_size": 8, "train.max_steps": 2, "train.knn_every": 0,
                "backbone.width": 8, "optim.warmup_epochs": 0, "train.device": "cpu",
                "train.channels_last": "false", "train.online_probe": "false"}
    _run([selfsup, "pretrain", "-c", "simclr_cifar10", "--run-dir", run_dir, "--quiet",
          *[arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]], tmp_path, env)
    assert (run_dir / "checkpoints" / "last.pt").is_file(), sorted(p.name for p in run_dir.rglob("*"))
