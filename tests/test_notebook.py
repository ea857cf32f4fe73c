"""notebooks/quickstart.ipynb runs top to bottom in a fresh kernel of this Python and shows what it says."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the test extra: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="the notebook test needs the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
#: The kernel starts, imports torch and transformers and runs every cell in about 20 s; generous for a loaded machine.
TIMEOUT_S = 300

#: DESIGN.md section 4, as in tests/test_recipes.py (KL from a differently seeded construction: two or three digits).
EXPECTED_KL = {1: 0.788, 2: 1.057, 5: 0.382, 10: 0.0197, 15: 7.7e-4}
KL_RTOL = 0.15
D_LLV, D_LLV_ATOL = 1.317, 0.003
#: A float64 model against its reparametrized twin (condition number 100): rounding only.
TWIN_LIMIT = 1e-8


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run by nbclient in a kernel named python3 that is this interpreter (sys.executable).

    The kernel spec is written to a temporary folder put first on JUPYTER_PATH, so a python3 spec elsewhere
    (user or system, perhaps another Python without hf_repsim) cannot be picked instead.
    """
    specs = tmp_path_factory.mktemp("jupyter")
    kernel = specs / "kernels" / "python3"
    kernel.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernel / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(specs))
        patch.delenv("MPLBACKEND", raising=False)
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            notebook, kernel_name="python3", timeout=TIMEOUT_S, resources={"metadata": {"path": str(ROOT)}}
        )
        client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    return notebook


def text_output(cell) -> str:
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


def cell_with(notebook, snippet: str):
    return next(cell for cell in notebook.cells if cell.cell_type == "code" and snippet in cell.source)


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_no_cell_errors(executed):
    errors = [
        o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"
    ]
    assert errors == []


def test_kl_falls_while_d_llv_stays(executed):
    text = text_output(cell_with(executed, "kl_counterexample(rho)"))
    rows = {int(m[1]): (float(m[2]), float(m[3])) for m in re.finditer(r"rho +(\d+): KL (\S+)  d_LLV (\S+)", text)}

    assert sorted(rows) == [1, 2, 5, 10, 15, 20]
    for rho, expected in EXPECTED_KL.items():
        assert rows[rho][0] == pytest.approx(expected, rel=KL_RTOL), rho
    assert rows[20][0] < 1e-4
    for rho, (_, d_llv) in rows.items():
        assert d_llv == pytest.approx(D_LLV, abs=D_LLV_ATOL), rho


def test_the_plot_is_drawn(executed):
    outputs = cell_with(executed, "plt.subplots").outputs
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_the_twin_is_identical_and_the_other_seed_is_not(executed):
    text = text_output(cell_with(executed, "reparametrize(model"))
    table = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in text.splitlines()[2:]}

    assert "360 contexts" in text
    assert table["kl"][0] < TWIN_LIMIT and table["d_svd_f"][0] < TWIN_LIMIT and table["d_llv"][0] < 1e-6
    assert table["m_cca_f"][0] > 1 - 1e-9 and table["procrustes"][0] > 1e-3
    assert table["kl"][1] > 1e-4 and table["d_svd_f"][1] > 1e-3
