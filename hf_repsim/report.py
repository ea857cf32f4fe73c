"""A self-contained HTML page (and heatmap PNGs) from the ``report.json`` that :mod:`hf_repsim.compare` writes.

The page opens offline: every figure is a PNG embedded as a ``data:`` URI, the style sheet is inline, and a
Content-Security-Policy forbids anything else (no script, no network). Every string taken from the report
(model names, paths, decoded tokens) is HTML-escaped.

Figures are drawn with matplotlib's Agg canvas on ``matplotlib.figure.Figure`` objects, never through
``pyplot``: nothing global changes (no backend switch in a notebook, no figure registry to leak). matplotlib
is imported inside the functions, so ``import hf_repsim`` does not need it; install it with
``pip install matplotlib`` (the ``plots`` extra).

Fields added after the first schema (``models[k]["spectrum"]``, ``models[k]["effective_rank"]``,
``details["diversity"]``, ``details["worst_label_tokens"]``) are used when present and reported as
"not recorded" when absent.

Example:
    >>> import json
    >>> from pathlib import Path
    >>> report = json.loads(Path("runs/demo/report.json").read_text())  # doctest: +SKIP
    >>> write_html(report, Path("runs/demo/report.html"))  # doctest: +SKIP
    PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The report schema this module was written for; a newer one draws what it can and warns.
SCHEMA_VERSION = 1

#: Said wherever an optional field of the report is missing.
NOT_RECORDED = "not recorded"

#: Matrices drawn on the HTML page (when present); :func:`write_heatmaps` writes every numeric one.
HTML_HEATMAPS = (
    "kl",
    "js",
    "d_logit_sq",
    "d_llv",
    "d_svd_f",
    "d_svd_g",
    "d_fg",
    "m_cca_f",
    "m_cca_g",
    "d_rep_sq",
    "cka",
    "procrustes",
)

#: Matrices of label ids or flags, not quantities: no heatmap.
NOT_QUANTITIES = ("pivot_label", "left_out_label", "bound_holds")

#: Similarities (1 = same): drawn with the reversed colour map so that dark means similar on every heatmap.
SIMILARITIES = ("m_cca_f", "m_cca_g", "cka")

#: Measures shown beside the table rather than in it (ids and the input set are provenance, not values).
PROVENANCE_KEYS = ("pivot_label", "left_out_label", "input_set")

QUANTILES = ("p50", "p90", "p99", "max")

#: (details key, row label) of the per-pair profile of terms.
PROFILE_ROWS = (
    ("label_term_quantiles", "label terms max(R, P)"),
    ("label_scale_quantiles", "label scale terms S"),
    ("input_term_quantiles", "input terms max(R', P')"),
    ("d_svd_f_quantiles", "d_SVD_f over label sets"),
)

MEASURE_NOTES = {
    "kl": "mean KL(p_first || p_second) over contexts",
    "kl_reverse": "mean KL(p_second || p_first)",
    "js": "mean Jensen-Shannon divergence",
    "d_logit_sq": "mean squared distance of centred logits",
    "d_llv": "log-likelihood variance distance: max(t1, t2, lam t3, lam t4)",
    "t1": "label term: max over labels of max(R, P)",
    "t2": "input term: max over the input set of max(R', P')",
    "t3": "label scale term: max |s_1 - s_2|",
    "t4": "input scale term: max |sigma_1 - sigma_2|",
    "d_svd_f": "1 - m_SVD of f through the label sets (max over sets)",
    "d_svd_g": "1 - m_SVD of g through the input set",
    "d_fg": "max(d_svd_f, d_svd_g)",
    "m_cca_f": "mean canonical correlation of f (1: linearly related)",
    "m_cca_g": "mean canonical correlation of g",
    "d_rep_sq": "mean ||f_1 - A_L f_2||^2 over sampled (pivot, label set)",
    "bound": "2 M d_llv (meaningful while below 1)",
    "bound_holds": "d_fg <= 2 M d_llv",
    "cka": "debiased linear CKA of f (baseline: rotations and scale only)",
    "procrustes": "orthogonal Procrustes distance of f (baseline: rotations only)",
}

#: Resolution of the embedded PNGs: sharp on a laptop screen, about 20-60 kB a figure.
DPI = 110

_MATPLOTLIB_MISSING = (
    "hf_repsim.report draws its figures with matplotlib, which is not installed; install it with "
    "`pip install matplotlib` (or `pip install hf_repsim[plots]`)."
)

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       color: #1b1b1b; background: #fff; line-height: 1.4; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ccd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eef0f6; } td.num { font-family: ui-monospace, monospace; text-align: right; }
code, .hash { font-family: ui-monospace, monospace; font-size: 0.9em; word-break: break-all; }
.note { background: #fff6dd; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; margin: 0.6em 0; }
.ok { color: #176b2c; font-weight: 600; } .bad { color: #a4161a; font-weight: 600; }
.missing { color: #777; font-style: italic; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.heatmaps figure { flex: 0 1 540px; }
figure { margin: 0.5em 0; } figcaption { font-size: 0.88em; color: #444; max-width: 760px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def write_html(report: dict[str, Any], path: Path) -> Path:
    """Write the comparison as one self-contained HTML page.

    The page holds: the run's provenance (versions, seed, models with weight sha256, data set and
    fingerprint, dtype, contexts, time, contexts/s); the f-covariance spectrum of each model with its
    effective rank (log scale); the bound d_fg <= 2 M d_LLV against every pair's measured point (log-log);
    heatmaps of the k x k matrices; and per pair the table of measures, the pivot and label-set provenance,
    the diversity condition, the quantile profile of the per-label and per-input terms and the worst labels
    decoded as tokens.

    Args:
        report: the dict of ``report.json`` (``json.loads`` of it, or what ``run_compare`` returns).
        path: the HTML file to write (parents are created); an existing folder gets ``report.html`` inside.

    Returns:
        The path written.

    Raises:
        ValueError: ``report`` is not a comparison report (no ``models`` or ``pairs``).
        ImportError: matplotlib is not installed.
    """
    _check_report(report)
    _require_matplotlib()
    path = Path(path)
    if path.is_dir():
        path = path / "report.html"
    sections = [
        _provenance_section(report),
        _models_section(report),
        _overview_section(report),
        *(_pair_section(report, pair) for pair in report["pairs"]),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_page("hf_repsim comparison", sections), encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_heatmaps(report: dict[str, Any], folder: Path) -> list[Path]:
    """Write one PNG per numeric k x k measure matrix, ``heatmap_<measure>.png``, in ``folder``.

    Entry [i][j] compares model i (first, row) with model j (second, column); undefined entries (the
    diagonal, d_rep_sq below the diagonal) are grey. Label-id and flag matrices (``pivot_label``,
    ``left_out_label``, ``bound_holds``) are not quantities and get no heatmap.

    Args:
        report: the dict of ``report.json``.
        folder: where to write (created if missing).

    Returns:
        The PNG paths, in the order of ``report["matrices"]``; empty if the report has no matrices.

    Raises:
        ValueError: ``report`` is not a comparison report.
        ImportError: matplotlib is not installed.
    """
    _check_report(report)
    _require_matplotlib()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [m.get("spec", str(k)) for k, m in enumerate(report["models"])]
    written = []
    for measure, matrix in _heatmap_matrices(report, None):
        path = folder / f"heatmap_{measure}.png"
        path.write_bytes(_heatmap_png(measure, matrix, names))
        written.append(path)
    return written


# Checks and small helpers.


def _check_report(report: Any) -> None:
    if not isinstance(report, dict) or not isinstance(report.get("models"), list) or "pairs" not in report:
        got = sorted(report) if isinstance(report, dict) else type(report).__name__
        raise ValueError(
            f"Expected a comparison report (a dict with 'models' and 'pairs', as hf_repsim.compare writes), got "
            f"{got!r}; pass json.loads(Path('report.json').read_text())."
        )
    version = report.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        warnings.warn(
            f"report.json has schema version {version}, newer than {SCHEMA_VERSION} that hf_repsim.report knows; "
            "fields it does not know are not drawn. Update hf_repsim.",
            stacklevel=3,
        )


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(_MATPLOTLIB_MISSING) from error


def _e(value: Any) -> str:
    """HTML-escaped text of any value from the report (quotes too: safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    """Escaped display text: floats to 6 significant digits, None as 'undefined', flags as yes/no."""
    if value is None:
        return '<span class="missing">undefined</span>'
    if isinstance(value, bool):
        return '<span class="ok">yes</span>' if value else '<span class="bad">no</span>'
    if isinstance(value, float):
        return _e(f"{value:.6g}")
    return _e(value)


def _missing(what: str = NOT_RECORDED) -> str:
    return f'<span class="missing">{_e(what)}</span>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are already-escaped HTML, the header is escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column key / value table; values are already-escaped HTML."""
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _page(title: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def _pair_title(pair: dict) -> str:
    (i, j), (a, b) = pair["models"], pair["names"]
    return f"{i}: {a}  vs  {j}: {b}"


def _pair_anchor(pair: dict) -> str:
    i, j = pair["models"]
    return f"pair-{int(i)}-{int(j)}"


def _duration(seconds: Any) -> str:
    if not _is_number(seconds):
        return _missing()
    minutes, rest = divmod(float(seconds), 60)
    return _e(f"{seconds:.1f} s" + (f" ({int(minutes)} min {rest:.0f} s)" if minutes else ""))


# Sections.


def _provenance_section(report: dict) -> str:
    data, models, pairs = report.get("data") or {}, report["models"], report["pairs"]
    rate = report.get("contexts_per_second")
    summary = (
        f"{len(models)} models, {len(pairs)} pairs, {report.get('contexts', '?')} contexts of "
        f"{data.get('dataset', '?')}" + (f" at {rate:.1f} contexts/s" if _is_number(rate) else "") + "."
    )
    rows = [
        ("data set", _e(data.get("dataset", NOT_RECORDED))),
        ("fingerprint", f'<span class="hash">{_e(data.get("fingerprint", NOT_RECORDED))}</span>'),
        ("tokens per window", _fmt(data.get("seq_len"))),
        ("windows / tokens", f"{_fmt(data.get('windows'))} / {_fmt(data.get('tokens'))}"),
        ("contexts", _fmt(report.get("contexts"))),
        ("time", _duration(report.get("seconds"))),
        ("contexts/s", _fmt(rate)),
        ("tokens/s", _fmt(report.get("tokens_per_second"))),
        ("seed", _fmt(report.get("seed"))),
        ("schema version", _fmt(report.get("schema_version"))),
    ]
    versions = report.get("versions") or {}
    version_rows = [(name, _e(v)) for name, v in versions.items()] or [("versions", _missing())]
    links = "".join(f'<li><a href="#{_pair_anchor(p)}">{_e(_pair_title(p))}</a></li>' for p in pairs)
    config = json.dumps(report.get("config"), indent=1, sort_keys=True)
    return (
        f"<header><h1>hf_repsim comparison</h1><p>{_e(summary)}</p></header>"
        '<section id="provenance"><h2>Provenance</h2><div class="grid">'
        f"{_kv_table(rows)}{_kv_table(version_rows)}</div>"
        f"<details><summary>configuration</summary><pre>{_e(config)}</pre></details>"
        f"<p>Pairs:</p><ul>{links}</ul></section>"
    )


def _models_section(report: dict) -> str:
    rows = [_model_row(k, m) for k, m in enumerate(report["models"])]
    notes = [
        f'<p class="note">Model {k} ({_e(m.get("spec"))}) soft-caps its logits at {_e(cap)}: it is outside the '
        "model family p(y|x) = softmax(f(x)^T g(y)); the representation measures use its pre-cap logits.</p>"
        for k, m in enumerate(report["models"])
        if (cap := (m.get("adapter") or {}).get("softcap")) is not None
    ]
    header = (
        "#",
        "spec",
        "dtype",
        "source",
        "sha256",
        "hidden",
        "labels",
        "logit scale",
        "soft-cap",
        "tied",
        "max reconstruction error",
        "effective rank",
    )
    return (
        '<section id="models"><h2>Models</h2>'
        + _table(header, rows, numeric=(0, 5, 6, 7, 10, 11))
        + "".join(notes)
        + _spectrum_figure(report["models"])
        + "</section>"
    )


def _model_row(k: int, model: dict) -> list[str]:
    adapter, source = model.get("adapter") or {}, model.get("source") or {}
    hashes = source.get("sha256") or {}
    sha = "<br>".join(f'{_e(f)}: <span class="hash">{_e(h)}</span>' for f, h in hashes.items()) or _missing()
    where = " ".join(
        f"{_e(key)}: <code>{_e(source[key])}</code>"
        for key in ("kind", "path", "derivation")
        if source.get(key) is not None
    )
    softcap = adapter.get("softcap")
    return [
        _e(k),
        f"<code>{_e(model.get('spec', '?'))}</code>",
        _fmt(model.get("dtype")),
        where or _missing(),
        sha,
        _fmt(adapter.get("hidden_size")),
        _labels_cell(adapter),
        _fmt(adapter.get("logit_scale")),
        "none" if softcap is None else f'<span class="bad">{_e(softcap)} (out of family)</span>',
        _fmt(adapter.get("tied")),
        _fmt(adapter.get("max_reconstruction_error")),
        _fmt(model["effective_rank"]) if "effective_rank" in model else _missing(),
    ]


def _labels_cell(adapter: dict) -> str:
    """Label count with the padded output rows that were excluded ([start, stop) as compare writes a range)."""
    text = _fmt(adapter.get("num_labels"))
    padded = adapter.get("padded_rows")
    if isinstance(padded, list) and len(padded) == 2 and all(_is_number(v) for v in padded):
        start, stop = padded
        return text + ("" if stop <= start else _e(f" (rows {start}..{stop - 1} padded, excluded)"))
    return text if padded in (None, []) else text + _e(f" (padded rows {padded})")


def _spectrum_figure(models: list[dict]) -> str:
    spectra = [(k, m) for k, m in enumerate(models) if m.get("spectrum")]
    if not spectra:
        return f"<p>Eigenvalue spectrum of the f covariance: {_missing()}.</p>"
    png, dropped = _spectrum_png(spectra)
    caption = (
        "Eigenvalues of each model's f covariance Cov_x[f(x)], in descending order (log scale); the dotted "
        "vertical line marks the effective rank exp(entropy of the normalised eigenvalues)."
    )
    if dropped:
        caption += " Not drawn (at or below zero, or missing): " + ", ".join(f"model {k}: {n}" for k, n in dropped)
    missing = [str(k) for k, m in enumerate(models) if not m.get("spectrum")]
    if missing:
        caption += f" Spectrum {NOT_RECORDED} for model(s) {', '.join(missing)}."
    return _img(png, "eigenvalue spectra of the f covariance", caption)


def _overview_section(report: dict) -> str:
    parts = ['<section id="overview"><h2>All pairs</h2>', _bound_figure(report["pairs"])]
    matrices = list(_heatmap_matrices(report, HTML_HEATMAPS))
    if len(report["models"]) < 2 or not matrices:
        parts.append(f"<p>k x k matrices: {_missing()}.</p>")
    else:
        names = [m.get("spec", str(k)) for k, m in enumerate(report["models"])]
        parts.append(
            "<p>Heatmaps: row i, column j compares model i (first) with model j (second); dark means similar "
            "on every map (similarities use the reversed colour map); grey cells are undefined.</p>"
        )
        figures = [_img(_heatmap_png(key, matrix, names), f"heatmap of {key}", key) for key, matrix in matrices]
        parts.append('<div class="grid heatmaps">' + "".join(figures) + "</div>")
    return "".join(parts) + "</section>"


def _pair_section(report: dict, pair: dict) -> str:
    measures, details = pair.get("measures") or {}, pair.get("details") or {}
    rows = [
        [_e(key), _fmt(value), _e(MEASURE_NOTES.get(key, ""))]
        for key, value in measures.items()
        if key not in PROVENANCE_KEYS
    ]
    return (
        f'<section class="pair" id="{_pair_anchor(pair)}"><h2>{_e(_pair_title(pair))}</h2>'
        + "".join(_pair_notes(report, pair))
        + '<div class="grid"><div>'
        + _table(("measure", "value", "meaning"), rows, numeric=(1,))
        + "</div>"
        + f"<div>{_pair_provenance(measures, details)}{_diversity(details)}</div></div>"
        + _profile(pair, details)
        + _worst_labels(details)
        + f"<details><summary>measure configuration</summary><pre>"
        f"{_e(json.dumps(details.get('config'), indent=1, sort_keys=True))}</pre></details></section>"
    )


def _pair_notes(report: dict, pair: dict) -> list[str]:
    details = pair.get("details") or {}
    notes = []
    if details.get("bound_applies") is False:
        note = details.get("bound_note") or "the bound does not apply"
        notes.append(f'<p class="note">Bound: {_e(note)} (hidden sizes {_e(details.get("hidden_sizes"))}).</p>')
    for k in pair["models"]:
        model = report["models"][k] if 0 <= k < len(report["models"]) else {}
        cap = (model.get("adapter") or {}).get("softcap")
        if cap is not None:
            notes.append(
                f'<p class="note">Model {_e(k)} soft-caps its logits at {_e(cap)} (out of the family): '
                "representation measures are on its pre-cap logits.</p>"
            )
    return notes


def _pair_provenance(measures: dict, details: dict) -> str:
    sets, search = details.get("label_sets") or {}, details.get("input_search") or {}
    input_set = measures.get("input_set")
    inputs = _missing()
    if isinstance(input_set, list) and input_set:
        inputs = _e(
            f"{len(input_set)} contexts (pivot input x_0 = context {input_set[0]}) from "
            f"{details.get('reservoir_contexts', '?')} kept"
        )
        if search:
            inputs += _e(
                f"; searched: {search.get('searched')}, tuples tried: {search.get('tuples')}, "
                f"chosen: {search.get('chosen_tuple')}"
            )
    rows = [
        ("pivot label y_0", _fmt(measures.get("pivot_label"))),
        ("pivot candidates", _fmt(details.get("pivot_candidates"))),
        ("left-out labels", _e(details.get("left_out_labels", NOT_RECORDED))),
        ("degenerate labels excluded", _fmt(details.get("degenerate_labels"))),
        (
            "label sets for d_SVD_f",
            _e(f"{sets.get('count', '?')} sets of {sets.get('size', '?')} labels, seed {sets.get('seed', '?')}")
            if sets
            else _missing(),
        ),
        ("input set", inputs),
        ("hidden sizes", _e(details.get("hidden_sizes", NOT_RECORDED))),
        ("contexts / labels", f"{_fmt(details.get('num_contexts'))} / {_fmt(details.get('num_labels'))}"),
        ("bound applies", _fmt(details.get("bound_applies"))),
    ]
    return "<h3>Pivot and label-set provenance</h3>" + _kv_table(rows)


def _diversity(details: dict) -> str:
    diversity = details.get("diversity")
    if not isinstance(diversity, dict):
        return f"<h3>Diversity condition</h3><p>{_missing()}.</p>"

    def condition(value: Any) -> str:
        return '<span class="bad">infinite (singular)</span>' if value is None else _fmt(value)

    rows = [
        ("holds", _fmt(diversity.get("holds"))),
        ("condition number, label set", condition(diversity.get("label_set_condition"))),
        ("condition number, input set", condition(diversity.get("input_set_condition"))),
    ]
    note = diversity.get("note")
    return "<h3>Diversity condition</h3>" + _kv_table(rows) + (f'<p class="note">{_e(note)}</p>' if note else "")


def _profile(pair: dict, details: dict) -> str:
    series = [(label, details[key]) for key, label in PROFILE_ROWS if isinstance(details.get(key), dict)]
    if not series:
        return f"<h3>Profile of the terms</h3><p>{_missing()}.</p>"
    rows = [[_e(label), *(_fmt(q.get(name)) for name in QUANTILES)] for label, q in series]
    table = _table(("terms", *QUANTILES), rows, numeric=(1, 2, 3, 4))
    caption = (
        "Quantiles of the per-label terms (max(R, P) and the scale terms S over the labels besides the pivot "
        "and the left-out labels), of the input terms over the chosen input set, and of d_SVD_f over the "
        "sampled label sets; the max is what enters d_LLV and d_fg. Values at or below zero are not drawn."
    )
    png = _profile_png(series, _pair_title(pair))
    return "<h3>Profile of the terms</h3>" + table + _img(png, f"profile of terms, {_pair_title(pair)}", caption)


def _worst_labels(details: dict) -> str:
    labels = details.get("worst_labels")
    if not isinstance(labels, list) or not labels:
        return f"<h3>Worst labels</h3><p>{_missing()}.</p>"
    tokens = details.get("worst_label_tokens")
    intro = "<h3>Worst labels</h3><p>Labels with the largest label term max(R, P), largest first"
    if not isinstance(tokens, list) or len(tokens) != len(labels):
        rows = [[_e(rank + 1), _e(label)] for rank, label in enumerate(labels)]
        return f"{intro}; decoded tokens: {_missing()}.</p>" + _table(("rank", "label id"), rows, numeric=(0, 1))
    rows = [
        [_e(rank + 1), _e(label), f"<code>{_e(repr(token))}</code>"]
        for rank, (label, token) in enumerate(zip(labels, tokens))
    ]
    return f"{intro}; tokens as the tokenizer spells them (Python repr, so spaces and newlines show).</p>" + _table(
        ("rank", "label id", "token"), rows, numeric=(0, 1)
    )


def _bound_figure(pairs: list[dict]) -> str:
    points = [
        (p["measures"]["d_llv"], p["measures"]["d_fg"], (p.get("details") or {}), p["models"])
        for p in pairs
        if _is_number((p.get("measures") or {}).get("d_llv")) and _is_number(p["measures"].get("d_fg"))
    ]
    if not points:
        return f"<p>Bound figure: d_llv and d_fg {NOT_RECORDED}.</p>"
    caption = (
        "Each pair's measured (d_LLV, d_fg) against the bound d_fg = 2 M d_LLV (one line per hidden size M; "
        "log-log). Filled points: the bound applies and a point below its line satisfies it. Hollow points: "
        "hidden sizes differ and the bound does not apply. d_fg never exceeds 1 (dotted), so the bound says "
        "something only while 2 M d_LLV < 1. Values at or below zero are drawn at the bottom or left edge as "
        "triangles."
    )
    skipped = len(pairs) - len(points)
    if skipped:
        caption += f" {skipped} pair(s) without both values are not drawn."
    return _img(_bound_png(points), "bound d_fg = 2 M d_LLV against the measured pairs", caption)


def _heatmap_matrices(report: dict, keys: Sequence[str] | None):
    """(measure, matrix) for the numeric k x k matrices of the report, in ``keys`` order (all if None)."""
    matrices = report.get("matrices")
    if not isinstance(matrices, dict):
        return
    k = len(report["models"])
    for key in keys if keys is not None else list(matrices):
        matrix = matrices.get(key)
        if key in NOT_QUANTITIES or not re.fullmatch(r"[A-Za-z0-9_]+", key) or not isinstance(matrix, list):
            continue
        if len(matrix) != k or any(not isinstance(row, list) or len(row) != k for row in matrix):
            continue
        cells = [v for row in matrix for v in row if v is not None]
        if cells and all(_is_number(v) for v in cells):
            yield key, matrix


# Figures.


def _figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot, nothing global)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(_MATPLOTLIB_MISSING) from error
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _mpl(text: Any, limit: int = 48) -> str:
    """Text for matplotlib: '$' escaped (no mathtext from a model name), long names shortened."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text.replace("$", r"\$")


def _spectrum_png(spectra: list[tuple[int, dict]]) -> tuple[bytes, list[tuple[int, int]]]:
    figure = _figure(7.5, 4.2)
    ax = figure.add_subplot()
    dropped = []
    for k, model in spectra:
        values = np.array([np.nan if v is None else float(v) for v in model["spectrum"]])  # (hidden,)
        index = np.arange(1, len(values) + 1)
        keep = np.isfinite(values) & (values > 0)
        if (~keep).any():
            dropped.append((k, int((~keep).sum())))
        rank = model.get("effective_rank")
        label = f"{k}: {_mpl(model.get('spec', k))}" + (f" (eff. rank {rank:.1f})" if _is_number(rank) else "")
        (line,) = ax.plot(index[keep], values[keep], lw=1.4, label=label)
        if _is_number(rank):
            ax.axvline(rank, color=line.get_color(), ls=":", lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (descending)")
    ax.set_ylabel("eigenvalue of Cov[f]")
    ax.set_title("f covariance spectrum")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(figure), dropped


def _bound_png(points: list[tuple[float, float, dict, list[int]]]) -> bytes:
    figure = _figure(7.0, 5.0)
    ax = figure.add_subplot()
    xs = np.array([p[0] for p in points], dtype=float)  # (n_pairs,)
    ys = np.array([p[1] for p in points], dtype=float)  # (n_pairs,)
    x_floor, y_floor = _log_floor(xs), _log_floor(ys)

    # One bound line per hidden size among the pairs it applies to, over the span of the points.
    grid = np.geomspace(x_floor / 2, max(xs.max(), x_floor) * 10, 50)
    sizes = [d.get("hidden_sizes") for _, _, d, _ in points if d.get("bound_applies")]
    for m in sorted({int(h[0]) for h in sizes if isinstance(h, list) and h}):
        ax.plot(grid, 2 * m * grid, lw=1.5, label=f"bound d_fg = 2 M d_LLV, M = {m}")
    ax.axhline(1.0, color="grey", ls=":", lw=1, label="d_fg <= 1")

    # The pairs; coinciding points (twins of one model) share one label.
    labels: dict[tuple[float, float, bool], list[str]] = {}
    for x, y, details, (i, j) in points:
        applies = details.get("bound_applies") is not False
        point = (max(x, x_floor), max(y, y_floor))
        ax.plot(
            *point,
            marker="v" if x <= 0 or y <= 0 else "o",
            ms=8,
            ls="none",
            color="C3",
            markerfacecolor="C3" if applies else "none",
        )
        labels.setdefault((float(f"{point[0]:.3g}"), float(f"{point[1]:.3g}"), applies), []).append(f"{i}-{j}")
    for (x, y, _), names in labels.items():
        text = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("d_LLV")
    ax.set_ylabel("d_fg = max(d_SVD_f, d_SVD_g)")
    ax.set_title("Representational dissimilarity against the d_LLV bound")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _png(figure)


def _log_floor(values: np.ndarray) -> float:
    """Where values at or below zero are drawn on a log axis: a decade under the smallest positive one."""
    positive = values[values > 0]
    return float(positive.min()) / 10 if positive.size else 1e-12


def _profile_png(series: list[tuple[str, dict]], title: str) -> bytes:
    figure = _figure(6.0, 3.4)
    ax = figure.add_subplot()
    for label, quantiles in series:
        values = np.array([quantiles.get(q) if _is_number(quantiles.get(q)) else np.nan for q in QUANTILES], float)
        values[~(values > 0)] = np.nan
        ax.plot(range(len(QUANTILES)), values, marker="o", lw=1.4, label=label)
    ax.set_xticks(range(len(QUANTILES)), QUANTILES)
    ax.set_yscale("log")
    ax.set_ylabel("value")
    ax.set_title(_mpl(title, limit=90), fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(figure)


def _heatmap_png(measure: str, matrix: list[list[Any]], names: list[str]) -> bytes:
    from matplotlib import colormaps

    k = len(matrix)
    values = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix])  # (k, k)
    size = min(3.2 + 0.55 * k, 14.0)
    figure = _figure(size + 1.2, size)
    ax = figure.add_subplot()
    cmap = colormaps["viridis_r" if measure in SIMILARITIES else "viridis"].with_extremes(bad="#dddddd")
    finite = values[np.isfinite(values)]
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=finite.min(), vmax=finite.max())
    figure.colorbar(image, ax=ax, shrink=0.8)
    labels = [f"{n}: {_mpl(name, limit=32)}" for n, name in enumerate(names)]
    ax.set_xticks(range(k), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("second model (column)")
    ax.set_ylabel("first model (row)")
    ax.set_title(measure)
    if k <= 12:
        _annotate_cells(ax, values, image)
    return _png(figure)


def _annotate_cells(ax, values: np.ndarray, image) -> None:
    """The value in each cell, in black or white depending on the cell's colour."""
    for i, j in np.ndindex(values.shape):
        value = values[i, j]
        if not np.isfinite(value):
            ax.text(j, i, "\u2014" if i == j else "n/a", ha="center", va="center", fontsize=8, color="#555555")
            continue
        red, green, blue, _ = image.cmap(image.norm(value))
        colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=8, color=colour)
