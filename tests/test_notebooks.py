"""The notebooks in notebooks/: stored without outputs, and run top to bottom as a reader would."""

import json
import os
from pathlib import Path

import pytest

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def tree(path: Path) -> set[str]:
    """Every path under path, relative to it (nothing for a missing directory)."""
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.is_dir() else set()


def test_the_build_gpt_notebook_is_found():
    assert "build_gpt.ipynb" in [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), \
        f"clear the outputs of {path.name} before committing it"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path):
    """Every cell runs without an error (its asserts included) in a fresh kernel started in
    notebooks/, as Jupyter would; the pictures are drawn; nothing is written into the clone."""
    import nbformat
    from nbclient import NotebookClient

    watched = {d: tree(d) for d in (ROOT / "notebooks", ROOT / "data")}
    top_level = set(os.listdir(ROOT))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 2  # the attention of one head, the loss curve
    assert {d: tree(d) for d in watched} == watched
    assert set(os.listdir(ROOT)) == top_level
