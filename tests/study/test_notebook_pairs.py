"""The notebooks are edited as notebooks: every ``notebooks/X.ipynb`` has its jupytext pair
``notebooks/X.py`` (py:percent, see ``jupytext.toml``) with the same cells, and is committed in
the state nbval can compare: run (every code cell has an execution count), one ``parameters``
cell for papermill, kernel ``python3``, and no large inline images: the study's figures go to
files; a notebook may end with one small summary figure (bench, ddp: at most
``MAX_INLINE_IMAGE`` bytes each).

After editing either side: ``.venv/bin/jupytext --sync notebooks/X.ipynb``, then execute the
notebook (README, "The study") so that its outputs match its sources.
"""

from __future__ import annotations

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PAIRS = sorted(NOTEBOOKS.glob("*.ipynb"))
MAX_INLINE_IMAGE = 48_000  # base64 characters: a ~35 KB PNG, the 72-dpi summary figure


def cells(notebook: object) -> list[tuple[str, str, list[str]]]:
    """(type, source, tags) of every cell, as jupytext reads them; outputs are not compared."""
    return [(cell.cell_type, cell.source.strip(), sorted(cell.metadata.get("tags", [])))
            for cell in notebook.cells]  # type: ignore[attr-defined]


def problems(ipynb: Path) -> list[str]:
    """Everything wrong with ``ipynb`` and its pair (empty: nothing)."""
    found = []
    script = ipynb.with_suffix(".py")
    if not script.is_file():
        return [f"{ipynb.name}: no jupytext pair {script.name} (jupytext --sync {ipynb.name})"]
    notebook = jupytext.read(ipynb)
    text = jupytext.read(script, fmt="py:percent")
    mine, theirs = cells(notebook), cells(text)
    if mine != theirs:
        where = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b),
                     min(len(mine), len(theirs)))
        found.append(f"{ipynb.name} and {script.name} differ (cell {where}; {len(mine)} vs "
                     f"{len(theirs)} cells): jupytext --sync, then execute the notebook")
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    if len(parameters) != 1:
        found.append(f"{ipynb.name}: {len(parameters)} cells tagged 'parameters', not 1")
    for name, spec in (("notebook", notebook.metadata.get("kernelspec", {})),
                       ("pair", text.metadata.get("kernelspec", {}))):
        if spec.get("name") != "python3" or spec.get("display_name") != "Python 3":
            found.append(f"{ipynb.name}: {name} kernelspec {spec!r}, not python3 / 'Python 3'")
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            found.append(f"{ipynb.name}: code cell {index} never ran (nbval: unrun reference)")
        for output in cell.get("outputs", []):
            images = {kind: data for kind, data in output.get("data", {}).items()
                      if kind.startswith("image/")}
            large = [kind for kind, data in images.items() if len(data) > MAX_INLINE_IMAGE]
            if large:
                found.append(f"{ipynb.name}: cell {index} shows a {', '.join(large)} of over "
                             f"{MAX_INLINE_IMAGE} bytes inline; write figures to files")
    return found


def test_there_are_notebooks() -> None:
    assert {p.name for p in PAIRS} >= {"convert.ipynb", "bench.ipynb", "ddp.ipynb",
                                       "report.ipynb"}


def test_every_script_has_its_notebook() -> None:
    scripts = {p.stem for p in NOTEBOOKS.glob("*.py") if p.name != "conftest.py"}
    assert scripts <= {p.stem for p in PAIRS}, "a notebooks/*.py without its .ipynb"


@pytest.mark.parametrize("ipynb", PAIRS, ids=[p.name for p in PAIRS])
def test_notebook_pair(ipynb: Path) -> None:
    assert problems(ipynb) == []


def test_a_pair_out_of_sync_is_caught(tmp_path: Path) -> None:
    """The check itself: an edited copy of a pair fails it."""
    source = NOTEBOOKS / "convert.ipynb"
    (tmp_path / source.name).write_bytes(source.read_bytes())
    script = source.with_suffix(".py").read_text()
    (tmp_path / "convert.py").write_text(script.replace("seed: int = 0", "seed: int = 1", 1))
    assert any("differ" in p for p in problems(tmp_path / source.name))
    (tmp_path / "convert.py").unlink()
    assert any("no jupytext pair" in p for p in problems(tmp_path / source.name))


def test_a_large_inline_image_is_caught(tmp_path: Path) -> None:
    import nbformat

    source = NOTEBOOKS / "report.ipynb"
    notebook = nbformat.read(source, as_version=4)
    cell = next(c for c in notebook.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("display_data",
                                           {"image/png": "A" * (MAX_INLINE_IMAGE + 1)})]
    nbformat.write(notebook, tmp_path / source.name)
    (tmp_path / "report.py").write_text(source.with_suffix(".py").read_text())
    assert any("inline" in p for p in problems(tmp_path / source.name))
