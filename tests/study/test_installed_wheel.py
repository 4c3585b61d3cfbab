"""The installed package outside a source checkout: ``pip wheel .``, the wheel installed into a
fresh virtual environment, then the library and a tiny study run from a folder that holds no
checkout. The study finds its notebooks where the wheel put them
(``<prefix>/share/lmdbio/notebooks``)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run(*argv: object, cwd: Path, timeout: float = 600,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([a if isinstance(a, str) else str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{argv}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only the built wheel; its dependencies (torch, papermill...) come from
    this interpreter's site-packages through a .pth line, so nothing is downloaded, and this
    checkout's editable install is not seen (its finder lives in a .pth there, which a path
    added by a .pth does not run)."""
    base = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        REPO, "-w", base / "dist", cwd=base)
    wheel = next((base / "dist").glob("lmdbio-*.whl"))
    venv = base / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=base)  # ensurepip: offline
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=base).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=base)
    return python


def test_the_checkout_install_is_untouched(installed: Path) -> None:
    """Installing the wheel elsewhere must not uninstall this environment's lmdbio (pip with
    --prefix would: it removes the distribution it finds on sys.path first)."""
    from importlib import metadata

    assert metadata.distribution("lmdbio").locate_file("") is not None
    proc = run(sys.executable, "-m", "pip", "show", "lmdbio", cwd=REPO)
    assert "Name: lmdbio" in proc.stdout


def test_the_wheel_is_what_gets_imported(installed: Path, tmp_path: Path) -> None:
    where = run(installed, "-c", "import lmdbio, lmdbio.study; print(lmdbio.__file__)",
                cwd=tmp_path).stdout.strip()
    assert str(installed.parent.parent) in where and str(REPO) not in where


def test_library_and_cli_work_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    from tests.helpers import build_simple_tree

    tree = build_simple_tree(tmp_path / "train", per_class=3)
    lmdbio_cli = installed.parent / "lmdbio"
    run(lmdbio_cli, "convert", tree, tmp_path / "train.lmdb", "-q", cwd=tmp_path)
    assert "OK, 6 records verified" in run(lmdbio_cli, "verify", "-q", tmp_path / "train.lmdb",
                                                  cwd=tmp_path).stdout
    code = ("import lmdbio; ds = lmdbio.ImageFolderLMDB('train.lmdb'); "
            "print(len(ds), ds.classes, ds[0][0].size)")
    assert run(installed, "-c", code, cwd=tmp_path).stdout.split()[0] == "6"


@pytest.mark.timeout(900)
def test_a_tiny_study_runs_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    notebooks = run(installed, "-c", "from lmdbio.study.runner import notebook_dir; "
                    "print(notebook_dir())", cwd=tmp_path).stdout.strip()
    assert notebooks == str(installed.parent.parent / "share" / "lmdbio" / "notebooks")
    env = dict(os.environ, PATH=f"{installed.parent}{os.pathsep}{os.environ['PATH']}")
    run(installed, "-m", "lmdbio.study", "--images", 48, "--repeats", 1, "--modes", "load",
        "--no-nfs", "--no-peers", "--ddp-procs", 0, "--batch-size", 8, "--num-workers", 1,
        "--work-dir", tmp_path / "work", "--results-dir", tmp_path / "results",
        cwd=tmp_path, env=env, timeout=900)
    results = tmp_path / "results"
    assert (results / "ssd" / "load" / "runs.parquet").exists()
    assert (results / "report.ipynb").exists()
