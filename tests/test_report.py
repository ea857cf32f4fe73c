"""The HTML report: self-contained, escaped, complete, graceful without optional fields, and it renders."""

from __future__ import annotations

import base64
import copy
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_repsim.report import HTML_HEATMAPS, NOT_RECORDED, write_heatmaps, write_html

#: Names that break a page (or matplotlib's mathtext) unless escaped.
HOSTILE = '<script>alert("x")</script>'
AMPERSAND = "A&B's $\\alpha$ model"

#: Decoded worst-label tokens as a tokenizer spells them, markup among them.
TOKENS = ["Ġthe", "<b>", "&amp;", '"', "\n", "Ċ", "é", "</td>", "x", "y"]

#: Set HF_REPSIM_BROWSER_TESTS=1 to make a missing chromium a failure rather than a skip.
BROWSER_ENV = "HF_REPSIM_BROWSER_TESTS"

#: A rendered page has text, tables and figures: many colours and a visible share of non-white pixels.
#: (A blank page has 1 colour and 0 non-white pixels; this one has thousands and about 10 %.)
MIN_COLOURS = 64
MIN_INK = 0.03


def synthetic_report(names: list[str], hidden: list[int], softcap: float | None = None, extras: bool = True) -> dict:
    """A report dict shaped like compare's, with distinct made-up values so the tests can find each one."""
    k = len(names)
    models = [_model(n, name, hidden[n], softcap if n == k - 1 else None, extras) for n, name in enumerate(names)]
    pairs = [_pair(i, j, names, hidden, extras) for i, j in itertools.combinations(range(k), 2)]
    matrices = {}
    for key in pairs[0]["measures"]:
        if key == "input_set":
            continue
        matrix = [[None] * k for _ in range(k)]
        for p in pairs:
            i, j = p["models"]
            matrix[i][j] = p["measures"][key]
            matrix[j][i] = p["measures"]["kl_reverse" if key == "kl" else key]
        matrices[key] = matrix
    return {
        "schema_version": 1,
        "models": models,
        "data": {"dataset": "canterbury & co", "fingerprint": "f" * 64, "seq_len": 16, "windows": 20, "tokens": 320},
        "contexts": 300,
        "seconds": 75.5,
        "contexts_per_second": 3.97,
        "tokens_per_second": 4.24,
        "seed": 7,
        "config": {"seed": 7, "dataset": "canterbury & co"},
        "versions": {"hf_repsim": "0.1.0", "torch": "2.13.0+cpu", "python": "3.11.7"},
        "pairs": pairs,
        "matrices": matrices,
    }


def _model(n: int, name: str, hidden: int, softcap: float | None, extras: bool) -> dict:
    model = {
        "spec": name,
        "source": {"kind": "folder", "path": f"/models/{name}", "sha256": {"model.safetensors": f"{n:02d}" * 32}},
        "dtype": "float32",
        "adapter": {
            "model_type": "gemma2" if softcap else "llama",
            "hidden_size": hidden,
            "num_labels": 50,
            "num_output_rows": 64,
            "logit_scale": 1.0,
            "softcap": softcap,
            "padded_rows": [50, 64],
            "tied": True,
            "max_reconstruction_error": 1.5e-7,
        },
    }
    if extras:
        model["spectrum"] = (np.geomspace(10.0, 1e-3, hidden) * (n + 1)).tolist() + [0.0]
        model["effective_rank"] = hidden / 3 + n + 0.123
    return model


def _pair(i: int, j: int, names: list[str], hidden: list[int], extras: bool) -> dict:
    same = hidden[i] == hidden[j]
    base = 0.001 * (1 + i + 3 * j)
    d_llv, d_fg = 0.0123457 * (1 + i + j), 0.0004321 * (1 + i + 2 * j)
    m = min(hidden[i], hidden[j])
    measures = {
        "kl": -7.2447e-10 if j == 1 else base,
        "kl_reverse": 1.1 * base,
        "js": 0.3 * base,
        "d_logit_sq": 1234.5 * j,
        "d_llv": d_llv,
        "t1": d_llv,
        "t2": 0.5 * d_llv,
        "t3": 1.25,
        "t4": 0.75,
        "pivot_label": 7,
        "left_out_label": 11,
        "input_set": list(range(100, 101 + m)),
        "d_svd_f": 0.0,
        "d_svd_g": d_fg,
        "d_fg": d_fg,
        "m_cca_f": 0.987654,
        "m_cca_g": 0.912345,
        "d_rep_sq": 3.5 if same else None,
        "bound": 2 * m * d_llv if same else None,
        "bound_holds": (d_fg <= 2 * m * d_llv) if same else None,
        "cka": 0.95,
        "procrustes": 0.0911542,
    }
    quantiles = {"p50": 1e-3, "p90": 2e-3, "p99": 4e-3, "max": d_llv}
    details = {
        "models": [i, j],
        "hidden_sizes": [hidden[i], hidden[j]],
        "num_contexts": 300,
        "num_labels": 50,
        "bound_applies": same,
        "bound_note": None if same else "hidden sizes differ: d_fg <= 2 M d_llv does not apply",
        "pivot_candidates": 16,
        "left_out_labels": [11],
        "degenerate_labels": 2,
        "degenerate_label_ids": [48, 49],
        "label_sets": {"count": 8, "size": m, "seed": 7},
        "d_svd_f_quantiles": {**quantiles, "p50": 0.0},
        "label_term_quantiles": quantiles,
        "label_scale_quantiles": quantiles,
        "input_term_quantiles": quantiles,
        "worst_labels": [20 + r for r in range(10)],
        "input_search": {"searched": True, "tuples": 20, "chosen_tuple": 3},
        "reservoir_contexts": 300,
        "config": {"lam": 1e-5, "seed": 7},
    }
    if extras:
        details["diversity"] = {
            "label_set_condition": 12.5,
            "input_set_condition": None,
            "holds": False,
            "note": "the diversity condition fails on the input side",
        }
        details["worst_label_tokens"] = TOKENS
    return {"models": [i, j], "names": [names[i], names[j]], "measures": measures, "details": details}


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Three models, the last soft-capped, every optional field present."""
    report = synthetic_report(["base", HOSTILE, AMPERSAND], [6, 6, 6], softcap=30.0)
    path = write_html(report, tmp_path_factory.mktemp("three") / "report.html")
    return report, path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def widths(tmp_path_factory):
    """Two models of different hidden sizes: the bound does not apply."""
    report = synthetic_report(["narrow & small", "wide"], [4, 6])
    path = write_html(report, tmp_path_factory.mktemp("widths") / "report.html")
    return report, path.read_text(encoding="utf-8")


def images(page: str) -> list[bytes]:
    """The decoded PNGs of every <img> on the page; fails if one is not an embedded PNG."""
    tags = re.findall(r"<img\b[^>]*>", page)
    sources = [re.search(r'src="([^"]*)"', tag).group(1) for tag in tags]
    assert all(s.startswith("data:image/png;base64,") for s in sources), [s[:40] for s in sources]
    return [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]


@pytest.mark.parametrize("case", ["three", "widths"])
def test_page_is_self_contained(case, request):
    _, page = request.getfixturevalue(case)
    assert page.startswith("<!DOCTYPE html>")
    assert 'src="http' not in page and "<link" not in page and "url(" not in page and "@import" not in page
    assert "<script" not in page  # the page runs no code, and a hostile name stays text
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images(page))


def test_three_models_figures_values_and_escaping(three):
    report, page = three

    # Figures: the spectra, the bound, one profile per pair, the heatmaps.
    assert len(images(page)) == 1 + 1 + 3 + len(HTML_HEATMAPS)

    # Every measure of every pair appears in its table, as formatted there.
    for pair in report["pairs"]:
        for key, value in pair["measures"].items():
            if isinstance(value, float):
                assert f'<td>{key}</td><td class="num">{value:.6g}</td>' in page, key

    # Names and tokens are escaped, never raw markup.
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "A&amp;B&#x27;s $\\alpha$ model" in page and "canterbury &amp; co" in page
    assert "&#x27;&lt;b&gt;&#x27;" in page and "<b>" not in page and "&#x27;&lt;/td&gt;&#x27;" in page
    assert "&#x27;\\n&#x27;" in page  # a newline token shows as its repr
    assert page.count("<th>token</th>") == 3  # each pair's worst labels with their tokens


def test_three_models_provenance_and_optional_fields(three):
    report, page = three
    for model in report["models"]:
        assert model["source"]["sha256"]["model.safetensors"] in page
        assert f"{model['effective_rank']:.6g}" in page
    assert "f" * 64 in page and "2.13.0+cpu" in page and "75.5 s (1 min 16 s)" in page and "3.97" in page
    assert "soft-caps its logits at 30.0" in page and "out of family" in page
    assert "infinite (singular)" in page and "fails on the input side" in page and "12.5" in page
    assert "rows 50..63 padded, excluded" in page
    assert "8 sets of 6 labels, seed 7" in page and "7 contexts (pivot input x_0 = context 100)" in page
    assert NOT_RECORDED not in page


def test_bound_that_does_not_apply(widths):
    _, page = widths
    assert "hidden sizes differ: d_fg &lt;= 2 M d_llv does not apply" in page
    assert "hidden sizes [4, 6]" in page
    # The d_rep_sq and bound matrices are undefined everywhere: no heatmap for them.
    assert len(images(page)) == 1 + 1 + 1 + len(HTML_HEATMAPS) - 1
    assert 'alt="heatmap of d_rep_sq"' not in page and 'alt="heatmap of kl"' in page


def test_missing_optional_fields_say_not_recorded(tmp_path):
    report = synthetic_report(["a", "b"], [6, 6], extras=False)
    page = write_html(report, tmp_path).read_text(encoding="utf-8")  # a folder: report.html inside
    assert (tmp_path / "report.html").exists()
    assert 'Eigenvalue spectrum of the f covariance: <span class="missing">not recorded' in page
    assert '<h3>Diversity condition</h3><p><span class="missing">not recorded' in page
    assert f'decoded tokens: <span class="missing">{NOT_RECORDED}' in page and "<th>token</th>" not in page
    assert '<td class="num">29</td>' in page  # the worst label ids are still there
    assert len(images(page)) == 1 + 1 + len(HTML_HEATMAPS)  # no spectrum figure

    # A report without matrices still has its pairs.
    bare = copy.deepcopy(report)
    del bare["matrices"]
    page = write_html(bare, tmp_path / "bare.html").read_text(encoding="utf-8")
    assert 'k x k matrices: <span class="missing">not recorded' in page and len(images(page)) == 2


def test_write_heatmaps(tmp_path):
    report = synthetic_report(["a", "b<", "c&"], [6, 6, 6])
    paths = write_heatmaps(report, tmp_path / "maps")
    expected = [k for k in report["matrices"] if k not in ("pivot_label", "left_out_label", "bound_holds")]
    assert [p.name for p in paths] == [f"heatmap_{k}.png" for k in expected]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(p.name for p in paths)
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in paths)


def test_not_a_report(tmp_path):
    with pytest.raises(ValueError, match=r"Expected a comparison report .* got \['measures'\]"):
        write_html({"measures": {}}, tmp_path / "x.html")
    with pytest.raises(ValueError, match=r"got 'list'"):
        write_heatmaps([], tmp_path)


def test_newer_schema_warns(tmp_path):
    report = synthetic_report(["a", "b"], [6, 6])
    report["schema_version"] = 99
    del report["matrices"]  # fewer figures to draw: the warning is the point
    with pytest.warns(UserWarning, match="schema version 99"):
        write_html(report, tmp_path / "report.html")


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        write_html(synthetic_report(["a", "b"], [6, 6]), tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


def test_import_does_not_load_matplotlib():
    code = "import sys, hf_repsim, hf_repsim.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def test_page_renders_in_a_browser(three, tmp_path):
    binary = chromium()
    if binary is None:
        if os.environ.get(BROWSER_ENV) == "1":
            pytest.fail(f"{BROWSER_ENV}=1 but chromium is not installed; install it (apt-get install -y chromium).")
        pytest.skip(f"chromium is not installed (set {BROWSER_ENV}=1 to make this a failure)")
    page = tmp_path / "report.html"
    page.write_text(three[1], encoding="utf-8")
    shot = tmp_path / "shot.png"
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        page.as_uri(),
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180)
    assert shot.exists(), f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"

    # Not blank: many colours and a visible share of non-white pixels.
    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(np.int64)  # (height, width, 3)
    assert pixels.shape[:2] == (2000, 1200)
    packed = pixels[..., 0] * 65536 + pixels[..., 1] * 256 + pixels[..., 2]  # (height, width)
    ink = float((packed != 0xFFFFFF).mean())
    assert len(np.unique(packed)) > MIN_COLOURS and ink > MIN_INK, (len(np.unique(packed)), ink)
