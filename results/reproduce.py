"""Does a (re-)implementation reproduce its paper? Measured runs against the reference table.

Runs are grouped by their configuration (:data:`GROUP_KEYS`); each group is matched to the
closest reference row of the same method and metric, comparing the settings in
:data:`MATCH_KEYS`. A group and a row that agree on all of them are *comparable*, and the group's
mean over seeds with its 95 % t interval gets one of these verdicts:

- ``reproduced``: |mean − reference| ≤ tolerance and the interval contains the reference;
- ``within tolerance``: |mean − reference| ≤ tolerance, but the interval excludes the reference
  (a systematic offset smaller than the tolerance), or there is one seed and so no interval;
- ``not reproduced``: |mean − reference| > tolerance, above or below;
- ``not comparable``: the closest row differs in some setting; every difference is named.

One-seed groups are marked ``(single seed)``: they can be at most "within tolerance".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from sslbench.benchmark.errors import SSLBenchError
from sslbench.benchmark.files import atomic_write_text
from sslbench.results import html as H
from sslbench.results import tracking as T
from sslbench.results.stats import mean_ci
from sslbench.results.tables import to_markdown

#: What defines one measured configuration (its seeds are aggregated).
GROUP_KEYS: tuple[str, ...] = (
    T.TAG_METHOD, T.TAG_DATASET, T.TAG_BACKBONE, T.TAG_EPOCHS, T.TAG_BATCH_SIZE, T.TAG_PROTOCOL,
    T.TAG_AUGMENT, T.TAG_EVAL_DATASET,
)  # fmt: skip
#: The settings a reference row must share with a group for the two to be comparable.
MATCH_KEYS: tuple[str, ...] = ("dataset", "backbone", "epochs", "batch_size", "protocol")
REPRODUCED, WITHIN, NOT_REPRODUCED, NOT_COMPARABLE = (
    "reproduced", "within tolerance", "not reproduced", "not comparable",
)  # fmt: skip
VERDICTS: tuple[str, ...] = (REPRODUCED, WITHIN, NOT_REPRODUCED, NOT_COMPARABLE)
SINGLE_SEED = " (single seed)"
#: sslbench protocol → the reference protocol names it measures the same thing as.
PROTOCOL_ALIASES: dict[str, frozenset[str]] = {"linear-augmented": frozenset({"linear"})}
#: Transform names of the ablation vocabulary (a bare one is a single-transform cell).
AUGMENT_TRANSFORM_NAMES = frozenset({"crop", "cutout", "color", "colorjitter", "jitter", "grayscale",
                                     "sobel", "noise", "blur", "rotate", "flip", "solarize"})
_PROVENANCE_RANK = {"M": 0, "P": 0, "R": 0, "X": 1, "P-img": 2, "S": 3}
COLUMNS: tuple[str, ...] = (
    "method", "dataset", "backbone", "epochs", "batch_size", "protocol", "augment", "metric",
    "n", "seeds", "mean", "ci_lo", "ci_hi", "reference", "reference_std", "delta", "tolerance",
    "verdict", "differs", "reference_id", "reference_source", "reference_provenance",
    "reference_flag", "reported_by", "run_ids", "git_commits",
)  # fmt: skip


def _norm(value: Any) -> Any:
    """A key value as comparable Python: NA → None, numbers → int when whole."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, str):
        return value.strip() or None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return int(f) if f.is_integer() else f


def _protocol_matches(measured: str | None, reference: str | None) -> bool:
    if measured == reference:
        return True
    return measured is not None and reference in PROTOCOL_ALIASES.get(measured, frozenset())


def differences(group: dict[str, Any], row: pd.Series) -> list[str]:
    """Every setting in :data:`MATCH_KEYS` (and the evaluation dataset) where they disagree,
    as ``"epochs 22 vs 1000"`` (measured vs reference; ``?`` when the reference does not say)."""
    out = []
    for key in MATCH_KEYS:
        mine, theirs = _norm(group.get(key)), _norm(row[key])
        if key == "protocol":
            if not _protocol_matches(mine, theirs):
                detail = f" ({row['protocol_detail']})" if row.get("protocol_detail") else ""
                out.append(f"protocol {mine} vs {theirs}{detail}")
        elif theirs is None:
            out.append(f"{key} {mine} vs ? (not stated)")
        elif mine != theirs:
            out.append(f"{key} {mine} vs {theirs}")
    theirs_aug = _norm(row.get("augment"))
    if theirs_aug is not None and theirs_aug != _norm(group.get(T.TAG_AUGMENT)):
        out.append(f"augment {group.get(T.TAG_AUGMENT)} vs {theirs_aug}")
    mine_eval, theirs_eval = _norm(group.get(T.TAG_EVAL_DATASET)), _norm(row["eval_dataset"])
    mine_eval = mine_eval or _norm(group.get("dataset"))
    theirs_eval = theirs_eval or _norm(row["dataset"])
    explicit = _norm(row["eval_dataset"]) is not None or mine_eval != _norm(group.get("dataset"))
    if explicit and mine_eval != theirs_eval:  # (same-dataset evaluations differ only via dataset)
        out.append(f"eval_dataset {mine_eval} vs {theirs_eval}")
    return out


def is_ablation_cell(augment: str) -> bool:
    """Whether a reference row's ``augment`` is an augmentation-ablation cell (``baseline``,
    ``-t``, ``t1+t2``, ``only:t``, a bare transform) rather than a recipe name or empty."""
    a = augment.strip()
    return bool(a) and (a == "baseline" or a.startswith(("-", "only:")) or "+" in a
                        or a in AUGMENT_TRANSFORM_NAMES)


def protocol_family(protocol: str | None) -> str:
    """``knn``, ``linear``, ``semisup``, ``detection``, ... (the protocol name's first part)."""
    return (protocol or "").split("-")[0]


def _preference(row: pd.Series) -> tuple[int, int, int, str]:
    """Among equally close rows: main results first, then primary sources, unflagged, by id."""
    return (
        0 if not row["ablation"] else 1,
        _PROVENANCE_RANK.get(row["provenance"], 4),
        0 if not row["flag"] else 1,
        row["id"],
    )


def closest_reference(group: dict[str, Any], candidates: pd.DataFrame) -> tuple[pd.Series, list[str]] | None:
    """The reference row of ``candidates`` closest to ``group``: of the same protocol family
    if there is one (a kNN result is compared with a kNN number), then with the fewest
    differences, then by :func:`_preference`."""
    best: tuple[tuple[bool, int, tuple[int, int, int, str]], pd.Series, list[str]] | None = None
    family = protocol_family(group.get("protocol"))
    for _, row in candidates.iterrows():
        diff = differences(group, row)
        score = (protocol_family(row["protocol"]) != family, len(diff), _preference(row))
        if best is None or score < best[0]:
            best = (score, row, diff)
    return None if best is None else (best[1], best[2])


def verdict(values: Sequence[float], reference: float, tolerance: float) -> str:
    """The verdict of a comparable group (see the module docstring)."""
    ci = mean_ci(values)
    if ci.n == 0:
        raise SSLBenchError("A verdict needs at least one measured value.", "")
    delta = ci.mean - reference
    if abs(delta) > tolerance:
        out = NOT_REPRODUCED
    elif ci.n >= 2 and ci.contains(reference):
        out = REPRODUCED
    else:
        out = WITHIN
    return out + (SINGLE_SEED if ci.n == 1 else "")


def _joined(values: pd.Series) -> str:
    return ",".join(sorted({str(v) for v in values.dropna() if str(v)}))


def reproduce(
    runs: pd.DataFrame, reference: pd.DataFrame, *, metrics: Sequence[str] = (T.METRIC_TOP1,),
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per measured configuration and metric with its closest reference and verdict.

    Args:
        runs: finished evaluation runs (``load_runs(kind="eval")``); needs the
            :data:`GROUP_KEYS` columns, ``seed``, ``run_id`` and the metrics.
        reference: :func:`sslbench.results.reference.load_reference`.
        metrics: the metrics to check (each needs a column in ``runs``; groups without a value
            for it are skipped).
        methods: only these methods (default: all in ``runs``).

    Returns:
        A frame with :data:`COLUMNS`, sorted by verdict (reproduced first), method, dataset, then
        the other keys. A group whose method has no reference row at all is ``not comparable``
        with ``differs`` = "no reference row for this method and metric".
    """
    if runs.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    missing = [c for c in (*GROUP_KEYS, T.TAG_SEED, "run_id") if c not in runs.columns]
    if missing:
        raise SSLBenchError(
            f"Cannot check reproduction: the runs lack the column(s) {missing}.",
            "Load them with sslbench.results.aggregate.load_runs(kind='eval').",
        )
    data = runs if methods is None else runs[runs[T.TAG_METHOD].isin(list(methods))]
    ref = reference[~reference["augment"].map(is_ablation_cell)]  # those are `results ablation`'s
    out: list[dict[str, Any]] = []
    for metric in metrics:
        if metric not in data.columns:
            raise SSLBenchError(
                f"No run logged the metric '{metric}'.", "Use --metric top1 or top5."
            )
        values = data.assign(_v=pd.to_numeric(data[metric], errors="coerce")).dropna(subset=["_v"])
        for key, group in values.groupby(list(GROUP_KEYS), dropna=False, sort=True):
            g = {k: _norm(v) for k, v in zip(GROUP_KEYS, key, strict=True)}
            ci = mean_ci(group["_v"].tolist())
            seeds = ",".join(str(int(s)) for s in sorted(group[T.TAG_SEED].dropna()))
            row: dict[str, Any] = {
                **{k: g[k] for k in ("method", "dataset", "backbone", "epochs", "batch_size",
                                     "protocol", "augment")},
                "metric": metric, "n": ci.n, "seeds": seeds, "mean": ci.mean, "ci_lo": ci.lo,
                "ci_hi": ci.hi, "run_ids": _joined(group["run_id"]),
                "git_commits": _joined(group[T.TAG_GIT_COMMIT]) if T.TAG_GIT_COMMIT in group else "",
            }  # fmt: skip
            candidates = ref[(ref["method"] == g["method"]) & (ref["metric"] == metric)]
            found = closest_reference(g, candidates)
            if found is None:
                row.update(verdict=NOT_COMPARABLE + (SINGLE_SEED if ci.n == 1 else ""),
                           differs="no reference row for this method and metric")
            else:
                r, diff = found
                row.update(
                    reference=float(r["value"]), reference_std=r["std"],
                    delta=ci.mean - float(r["value"]), tolerance=float(r["tolerance"]),
                    differs="; ".join(diff), reference_id=r["id"], reference_source=r["source"],
                    reference_provenance=r["provenance"], reference_flag=r["flag"],
                    reported_by=r["reported_by"],
                    verdict=(NOT_COMPARABLE + (SINGLE_SEED if ci.n == 1 else "")) if diff
                    else verdict(group["_v"].tolist(), float(r["value"]), float(r["tolerance"])),
                )
            out.append(row)
    frame = pd.DataFrame(out, columns=list(COLUMNS))
    order = frame["verdict"].map(lambda v: next(i for i, x in enumerate(VERDICTS) if v.startswith(x)))
    frame = frame.assign(_o=order).sort_values(
        ["_o", "method", "dataset", "backbone", "protocol", "epochs", "batch_size", "metric"],
        kind="stable", na_position="last",
    )
    return frame.drop(columns="_o").reset_index(drop=True)


# --- Output -------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 2) -> str:
    return "" if x is None or pd.isna(x) else f"{float(x):.{digits}f}"


def _measured(r: pd.Series) -> str:
    if pd.isna(r["ci_lo"]):
        return f"{_fmt(r['mean'])} (n={r['n']})"
    return f"{_fmt(r['mean'])} [{_fmt(r['ci_lo'])}, {_fmt(r['ci_hi'])}] (n={r['n']})"


def _reference(r: pd.Series) -> str:
    if pd.isna(r["reference"]):
        return "—"
    std = f" ± {_fmt(r['reference_std'])}" if not pd.isna(r["reference_std"]) else ""
    flag = f" [{r['reference_flag']}]" if r["reference_flag"] else ""
    return f"{_fmt(r['reference'])}{std}{flag}"


def summary_table(report: pd.DataFrame) -> pd.DataFrame:
    """The report as display text: one row per line of the terminal / Markdown table."""
    cols = {
        "method": report["method"], "dataset": report["dataset"], "backbone": report["backbone"],
        "epochs": report["epochs"], "batch": report["batch_size"], "augment": report["augment"],
        "protocol": report["protocol"], "metric": report["metric"],
        "measured (95% CI)": [_measured(r) for _, r in report.iterrows()],
        "reference": [_reference(r) for _, r in report.iterrows()],
        "Δ": [("+" if round(d, 2) > 0 else "") + _fmt(round(d, 2) + 0.0) if not pd.isna(d) else ""
              for d in report["delta"]],
        "tol": [_fmt(t, 1) for t in report["tolerance"]],
        "verdict": report["verdict"], "differs": report["differs"].fillna(""),
        "source": [f"{s} ({p})" if isinstance(s, str) and s else "" for s, p in
                   zip(report["reference_source"], report["reference_provenance"], strict=True)],
    }  # fmt: skip
    return pd.DataFrame(cols)


def counts(report: pd.DataFrame) -> dict[str, int]:
    """How many rows got each verdict (single-seed marks folded in)."""
    return {v: int(report["verdict"].str.startswith(v).sum()) for v in VERDICTS}


def _caption(report: pd.DataFrame, tracking_uri: str) -> str:
    c = counts(report)
    return (
        f"{len(report)} configuration(s) from {tracking_uri}: "
        + ", ".join(f"{n} {v}" for v, n in c.items())
        + ". Mean over seeds with its 95 % Student-t interval; final-epoch numbers; "
        "reproduced = |Δ| ≤ tolerance and the interval contains the reference; within tolerance "
        "= |Δ| ≤ tolerance only (or one seed); not comparable = the closest reference differs in "
        "the settings named."
    )


def to_markdown_report(report: pd.DataFrame, tracking_uri: str) -> str:
    """The report as Markdown: a caption and one table."""
    return f"# Reproduction report\n\n{_caption(report, tracking_uri)}\n\n{to_markdown(summary_table(report))}"


def _verdict_class(v: str) -> str:
    for prefix, cls in ((REPRODUCED, "v-reproduced"), (WITHIN, "v-within"),
                        (NOT_REPRODUCED, "v-not"), (NOT_COMPARABLE, "v-nc")):  # fmt: skip
        if v.startswith(prefix):
            return cls
    return ""


def to_html_report(report: pd.DataFrame, tracking_uri: str) -> str:
    """The report as one self-contained HTML page (no scripts, no external resources)."""
    shown = summary_table(report)
    headers = [(c, c, False) for c in shown.columns]
    rows = []
    for i, (_, r) in enumerate(shown.iterrows()):
        src = report.iloc[i]
        cells = []
        for c in shown.columns:
            if c == "verdict":
                cells.append(f'<td class="{_verdict_class(r[c])}">{H.esc(r[c])}</td>')
            elif c in ("measured (95% CI)", "reference", "Δ", "tol", "epochs", "batch"):
                cells.append(f'<td class="num">{H.esc(r[c])}</td>')
            else:
                cells.append(f"<td>{H.esc(r[c])}</td>")
        cells.append(f'<td class="id">{H.esc(src["run_ids"])}</td>')
        rows.append(cells)
    headers.append(("run_ids", "MLflow runs", False))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = H.table(headers, rows, table_id="reproduce", caption=H.esc(_caption(report, tracking_uri)))
    return H.page("sslbench reproduction report", f"generated {H.esc(stamp)}", body)


def write_report(report: pd.DataFrame, out_dir: Path, tracking_uri: str, stem: str = "reproduce") -> dict[str, Path]:
    """Writes ``{stem}.md``, ``{stem}.html`` and ``{stem}.csv`` (every column) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{stem}.{k}" for k in ("md", "html", "csv")}
    atomic_write_text(paths["md"], to_markdown_report(report, tracking_uri))
    atomic_write_text(paths["html"], to_html_report(report, tracking_uri))
    atomic_write_text(paths["csv"], report.to_csv(index=False))
    return paths
