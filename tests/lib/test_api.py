"""The public surface: __all__, the lazy Dataset attribute, the command's --help and --version."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import lmdbio

from tests.helpers import REPO, run_cli


def isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest, each alphabetical (ruff RUF022 / isort style)."""
    if name.isupper() and len(name) > 1:
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_sorted_unique_and_resolves() -> None:
    names = lmdbio.__all__
    assert len(names) == len(set(names))
    assert names == sorted(names, key=isort_key)
    for name in names:
        assert getattr(lmdbio, name) is not None, name


def test_all_covers_the_public_names() -> None:
    import types

    public = {name for name, value in vars(lmdbio).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)
              and name not in ("annotations", "TYPE_CHECKING", "Any")}
    assert public - set(lmdbio.__all__) == set()


@pytest.mark.parametrize("module", ["errors", "format", "folder", "database", "tools", "envs",
                                    "converter", "writer", "sources", "legacy", "decode",
                                    "prefetch", "locality", "samplers", "access", "publish",
                                    "system", "shard_plan", "shard_set", "shard_conversion"])
def test_submodule_all_resolves(module: str) -> None:
    import importlib

    mod = importlib.import_module(f"lmdbio.{module}")
    assert mod.__all__ == sorted(mod.__all__, key=isort_key), module
    for name in mod.__all__:
        assert hasattr(mod, name), (module, name)


def test_exported_objects_are_the_real_ones() -> None:
    from lmdbio import convert as convert_function  # the module is lmdbio.converter
    from lmdbio.tools import verify

    assert callable(convert_function) and convert_function.__module__ == "lmdbio.converter"
    assert lmdbio.verify is verify
    assert lmdbio.__version__ == "0.1.0"
    for name in ("convert", "info", "verify", "extract", "open_database"):
        signature = inspect.signature(getattr(lmdbio, name))
        assert all(p.annotation is not inspect.Parameter.empty
                   for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD), name
    for error in ("SourceError", "DatabaseNotFoundError"):
        assert issubclass(getattr(lmdbio, error), FileNotFoundError)
    assert issubclass(lmdbio.OutputExistsError, FileExistsError)
    assert issubclass(lmdbio.FormatError, ValueError)
    assert all(issubclass(getattr(lmdbio, n), lmdbio.LmdbioError)
               for n in lmdbio.__all__ if n.endswith("Error"))


LAZY = """
import sys
import lmdbio
assert "torch" not in sys.modules, "import lmdbio imported torch"
assert "ImageFolderLMDB" not in vars(lmdbio)
cls = lmdbio.ImageFolderLMDB
from lmdbio.dataset import ImageFolderLMDB
assert cls is ImageFolderLMDB
import torch.utils.data
assert issubclass(cls, torch.utils.data.Dataset)
from lmdbio import ImageFolderLMDB as again
assert again is cls
try:
    lmdbio.no_such_name
except AttributeError as exc:
    assert "no_such_name" in str(exc)
else:
    raise SystemExit("no AttributeError")
print("OK")
"""


def test_image_folder_lmdb_resolves_lazily() -> None:
    proc = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"


def test_help_lists_the_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("convert", "info", "verify", "extract"):
        assert command in proc.stdout
    convert = run_cli("convert", "--help")
    assert convert.returncode == 0
    for option in ("--overwrite", "--resume", "--on-error", "--verify-images", "--commit-mb"):
        assert option in convert.stdout
    assert "(default: 32)" in convert.stdout  # defaults are shown


def test_version_through_the_entry_point() -> None:
    script = Path(sys.executable).parent / "lmdbio"
    assert script.exists(), "the console script is installed with the package"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"lmdbio {lmdbio.__version__}"


def test_no_command_is_a_usage_error() -> None:
    proc = run_cli()
    assert proc.returncode == 2
    assert "usage: lmdbio" in proc.stderr and "Traceback" not in proc.stderr


def test_main_returns_exit_codes_in_process(tmp_path: Path, capsys) -> None:
    from lmdbio.cli import main

    assert main(["info", str(tmp_path / "missing.lmdb")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lmdbio: error: ") and err.count("\n") == 1
