"""The leaderboard: one row per configuration, every protocol's result over seeds, and its cost.

A row is a (method, recipe, backbone, epochs, batch size, dataset, augmentation); its protocol
cells are the mean over seeds of the final-epoch metric (top-1, or AP for detection) with a 95 %
Student-t interval and n. A best-epoch number, when a protocol logged one, is kept beside the
result and labelled, never used as it. Cost comes from the pretraining (parent) run: device-hours
(wall time × world size), images/s and peak memory. Rows are ranked per dataset by the primary
protocol; ``p_order`` is the bootstrap probability (over seeds) that a row's mean really is above
the next row's (:func:`sslbench.results.stats.order_probability`).

:func:`build_leaderboard` makes the frame; :func:`to_markdown_table` and :func:`to_html_page`
render it; :func:`write_leaderboard` writes ``leaderboard.{html,md,csv}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from sslbench.benchmark.files import atomic_write_text
from sslbench.results import html as H
from sslbench.results import tracking as T
from sslbench.results.aggregate import PRETRAIN_PREFIX, attach_pretrain, device_hours
from sslbench.results.stats import mean_ci, order_probability
from sslbench.results.tables import to_markdown

ROW_KEYS: tuple[str, ...] = (
    T.TAG_METHOD, T.TAG_RECIPE, T.TAG_BACKBONE, T.TAG_EPOCHS, T.TAG_BATCH_SIZE, T.TAG_DATASET,
    T.TAG_AUGMENT,
)  # fmt: skip
#: Protocols ranked by, in order of preference, when the caller names none present.
PRIMARY_PREFERENCE: tuple[str, ...] = ("linear", "linear-augmented", "knn-k20-t0.07", "knn-k200-t0.1")


def protocol_metric(protocol: str) -> str:
    """The metric a protocol's leaderboard cell shows: AP for detection, else top-1."""
    return "AP" if protocol.startswith("detection") else T.METRIC_TOP1


def _column(protocol: str, eval_dataset: Any, dataset: Any) -> str:
    """The leaderboard column of a protocol: ``linear``, or ``linear@cifar100`` for transfer."""
    if isinstance(eval_dataset, str) and eval_dataset and eval_dataset != dataset:
        return f"{protocol}@{eval_dataset}"
    return protocol


def _num(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)


def build_leaderboard(
    evals: pd.DataFrame, pretrains: pd.DataFrame | None = None, *, primary: str | None = None,
    datasets: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, list[str], str | None]:
    """The leaderboard frame.

    Args:
        evals: finished evaluation runs (``load_runs(kind="eval")``).
        pretrains: finished pretraining runs (``load_runs(kind="pretrain")``) for the cost
            columns; None leaves them empty.
        primary: the protocol column to rank by (default: the first of
            :data:`PRIMARY_PREFERENCE` present, else the first column).
        datasets: only these pretraining datasets.

    Returns:
        ``(frame, protocol_columns, primary)``. The frame has the :data:`ROW_KEYS`, then per
        protocol column ``P``: ``P:mean``, ``P:lo``, ``P:hi``, ``P:n``, ``P:values`` (the
        per-seed values, seed order), ``P:best_epoch`` (mean of a logged best-epoch number,
        else NaN); then ``seeds``, ``device``, ``device_hours``, ``images_per_s``,
        ``peak_memory_mb`` (means over the pretraining runs), ``git_commits``,
        ``pretrain_run_ids``, ``eval_run_ids``, ``rank`` (1-based within the dataset) and
        ``p_order`` (vs the next row of the same dataset; NaN for the last or with < 2 seeds).
    """
    data = evals.copy()
    if datasets:
        data = data[data[T.TAG_DATASET].isin(list(datasets))]
    if data.empty:
        return pd.DataFrame(columns=[*ROW_KEYS, "rank", "p_order"]), [], None
    if pretrains is not None and not pretrains.empty:
        data = attach_pretrain(data, pretrains)
    data["_col"] = [
        _column(str(p), e, d) for p, e, d in
        zip(data[T.TAG_PROTOCOL], data[T.TAG_EVAL_DATASET], data[T.TAG_DATASET], strict=True)
    ]  # fmt: skip
    wanted = data[T.TAG_PROTOCOL].astype(str).map(protocol_metric)  # each row's metric column
    data["_value"] = math.nan
    for metric in set(wanted) & set(data.columns):
        mask = wanted == metric
        data.loc[mask, "_value"] = _num(data.loc[mask, metric])
    best = data[T.METRIC_BEST_EPOCH_TOP1] if T.METRIC_BEST_EPOCH_TOP1 in data.columns else None
    data["_best"] = _num(best) if best is not None else math.nan
    data = data.dropna(subset=["_value"])
    columns = sorted(set(data["_col"]), key=lambda c: (c.split("@")[0] not in PRIMARY_PREFERENCE,
                                                         PRIMARY_PREFERENCE.index(c) if c in PRIMARY_PREFERENCE else 0, c))
    rows: list[dict[str, Any]] = []
    for key, group in data.groupby(list(ROW_KEYS), dropna=False, sort=True):
        row: dict[str, Any] = dict(zip(ROW_KEYS, key, strict=True))
        for col in columns:
            cell = group[group["_col"] == col].sort_values(T.TAG_SEED, kind="stable")
            ci = mean_ci(cell["_value"].tolist())
            row.update({
                f"{col}:mean": ci.mean, f"{col}:lo": ci.lo, f"{col}:hi": ci.hi, f"{col}:n": ci.n,
                f"{col}:values": cell["_value"].tolist(),
                f"{col}:best_epoch": float(cell["_best"].mean()) if cell["_best"].notna().any() else math.nan,
            })  # fmt: skip
        seeds = sorted({int(s) for s in group[T.TAG_SEED].dropna()})
        row["seeds"] = ",".join(map(str, seeds))
        pre = group.drop_duplicates("parent_run_id") if "parent_run_id" in group else group.iloc[:0]
        pre = pre[pre["parent_run_id"].notna()] if not pre.empty else pre
        has_pre = PRETRAIN_PREFIX + "run_id" in pre.columns and pre[PRETRAIN_PREFIX + "run_id"].notna().any()
        if has_pre:
            pre = pre[pre[PRETRAIN_PREFIX + "run_id"].notna()]
            row["device"] = ",".join(sorted({str(d).split(":")[0] for d in pre.get(PRETRAIN_PREFIX + T.TAG_DEVICE, pd.Series(dtype=str)).dropna()}))
            row["device_hours"] = float(device_hours(pre).mean())
            row["images_per_s"] = float(_num(pre.get(PRETRAIN_PREFIX + T.METRIC_FINAL_IMAGES_PER_S, pd.Series(dtype=float))).mean())
            row["peak_memory_mb"] = float(_num(pre.get(PRETRAIN_PREFIX + T.METRIC_FINAL_PEAK_MEMORY_MB, pd.Series(dtype=float))).mean())
            row["pretrain_run_ids"] = ",".join(pre[PRETRAIN_PREFIX + "run_id"].astype(str))
        else:
            row.update(device="", device_hours=math.nan, images_per_s=math.nan,
                       peak_memory_mb=math.nan, pretrain_run_ids="")
        commits = group[T.TAG_GIT_COMMIT].dropna().astype(str) if T.TAG_GIT_COMMIT in group else pd.Series(dtype=str)
        row["git_commits"] = ",".join(sorted(set(commits)))
        row["eval_run_ids"] = ",".join(group["run_id"].astype(str))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if primary is None:
        primary = next((p for p in PRIMARY_PREFERENCE if p in columns), columns[0] if columns else None)
    elif primary not in columns:
        from sslbench.benchmark.errors import SSLBenchError

        raise SSLBenchError(
            f"Cannot rank by protocol '{primary}': no run has a result for it.",
            f"Protocols with results: {', '.join(columns) or 'none'}.",
        )
    frame = _rank(frame, primary)
    return frame, columns, primary


def _rank(frame: pd.DataFrame, primary: str | None) -> pd.DataFrame:
    if primary is None:
        return frame.assign(rank=pd.NA, p_order=math.nan)
    mean = f"{primary}:mean"
    frame = frame.sort_values([T.TAG_DATASET, mean], ascending=[True, False], na_position="last",
                              kind="stable").reset_index(drop=True)
    frame["rank"] = frame.groupby(T.TAG_DATASET, dropna=False).cumcount() + 1
    p_order = [math.nan] * len(frame)
    for i in range(len(frame) - 1):
        same = frame.at[i, T.TAG_DATASET] == frame.at[i + 1, T.TAG_DATASET]
        a, b = frame.at[i, f"{primary}:values"], frame.at[i + 1, f"{primary}:values"]
        if same and a and b:
            p_order[i] = order_probability(a, b)
    frame["p_order"] = p_order
    return frame


# --- Rendering -----------------------------------------------------------------------------------


def _cell_text(mean: float, lo: float, hi: float, n: int) -> str:
    if pd.isna(mean):
        return "—"
    if pd.isna(lo):
        return f"{mean:.1f} (n={n})"
    return f"{mean:.1f} ± {(hi - lo) / 2:.1f} (n={n})"


def _int_text(x: Any) -> str:
    return "" if x is None or pd.isna(x) else str(int(x))


def _cost_label(frame: pd.DataFrame) -> str:
    devices = {d for v in frame.get("device", pd.Series(dtype=str)).fillna("") for d in str(v).split(",") if d}
    return "GPU-h" if devices == {"cuda"} else "CPU-h" if devices <= {"cpu"} else "device-h"


def caption(frame: pd.DataFrame, primary: str | None, tracking_uri: str) -> str:
    """What the numbers are, for the page and the Markdown file."""
    return (
        f"{len(frame)} configuration(s) from {tracking_uri}. Cells: final-epoch top-1 (AP for "
        "detection), mean ± half-width of the 95 % Student-t interval over seeds (n seeds; no ± "
        "with one seed). A best-epoch number, where a protocol logged one, is shown beside it in "
        f"italics and labelled: it is not the result. Ranked per dataset by {primary}; P(order) is "
        "the bootstrap probability over seeds that a row's mean is above the next row's (needs "
        "≥ 2 seeds on both). Cost: device-hours of pretraining (wall time × devices), mean "
        "images/s, and peak memory (CUDA peak allocation; on CPU the process's peak RSS)."
    )


def to_markdown_table(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """A Markdown pipe table of the leaderboard (run ids shortened to 8 characters)."""
    cost = _cost_label(frame)
    shown: dict[str, list[Any]] = {c: [] for c in ("rank", "method", "recipe", "backbone", "dataset",
                                                     "epochs", "batch", "augment", *columns, "P(order)",
                                                     "seeds", cost, "img/s", "peak MiB", "commit", "runs")}
    for _, r in frame.iterrows():
        shown["rank"].append(_int_text(r["rank"]))
        for k, c in (("method", T.TAG_METHOD), ("recipe", T.TAG_RECIPE), ("backbone", T.TAG_BACKBONE),
                     ("dataset", T.TAG_DATASET), ("augment", T.TAG_AUGMENT)):
            shown[k].append("" if pd.isna(r[c]) else r[c])
        shown["epochs"].append(_int_text(r[T.TAG_EPOCHS]))
        shown["batch"].append(_int_text(r[T.TAG_BATCH_SIZE]))
        for col in columns:
            text = _cell_text(r[f"{col}:mean"], r[f"{col}:lo"], r[f"{col}:hi"], r[f"{col}:n"])
            if not pd.isna(r[f"{col}:best_epoch"]):
                text += f" (best epoch: {r[f'{col}:best_epoch']:.1f})"
            shown[col].append(text)
        shown["P(order)"].append("" if pd.isna(r["p_order"]) else f"{r['p_order']:.2f}")
        shown["seeds"].append(r["seeds"])
        shown[cost].append("" if pd.isna(r["device_hours"]) else f"{r['device_hours']:.3f}")
        shown["img/s"].append("" if pd.isna(r["images_per_s"]) else f"{r['images_per_s']:.0f}")
        shown["peak MiB"].append("" if pd.isna(r["peak_memory_mb"]) else f"{r['peak_memory_mb']:.0f}")
        shown["commit"].append(",".join(c[:8] for c in str(r["git_commits"]).split(",") if c))
        ids = r["pretrain_run_ids"] or r["eval_run_ids"]
        shown["runs"].append(",".join(i[:8] for i in str(ids).split(",") if i))
    return to_markdown(pd.DataFrame(shown))


_SCRIPT = r"""
(function () {
  "use strict";
  var table = document.getElementById("leaderboard");
  var tbody = table.tBodies[0];
  var dataset = document.getElementById("filter-dataset");
  var protocol = document.getElementById("filter-protocol");
  var shown = document.getElementById("shown");
  function apply() {
    var d = dataset.value, p = protocol.value, count = 0;
    Array.prototype.forEach.call(tbody.rows, function (tr) {
      var ok = (d === "" || tr.getAttribute("data-dataset") === d);
      if (ok && p !== "") {
        var cell = tr.querySelector('td[data-protocol="' + p + '"]');
        ok = cell !== null && cell.hasAttribute("data-value");
      }
      tr.hidden = !ok;
      if (ok) { count += 1; }
    });
    Array.prototype.forEach.call(table.querySelectorAll("[data-protocol]"), function (el) {
      el.hidden = (p !== "" && el.getAttribute("data-protocol") !== p);
    });
    shown.textContent = count + " of " + tbody.rows.length + " rows shown";
  }
  function key(tr, col) {
    var td = tr.querySelector('td[data-col="' + col + '"]');
    if (td === null) { return null; }
    var v = td.getAttribute("data-value");
    if (v !== null) { return parseFloat(v); }
    if (td.classList.contains("num")) { return null; }  // a number column without one: missing
    var t = td.textContent.trim();
    return t === "" ? null : t;
  }
  Array.prototype.forEach.call(table.querySelectorAll("th.sortable"), function (th) {
    th.addEventListener("click", function () {
      var col = th.getAttribute("data-col");
      var dir = th.getAttribute("aria-sort") === "descending" ? "ascending" : "descending";
      Array.prototype.forEach.call(table.querySelectorAll("th"), function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir);
      var rows = Array.prototype.slice.call(tbody.rows);
      rows.sort(function (a, b) {
        var x = key(a, col), y = key(b, col);
        if (x === null && y === null) { return 0; }
        if (x === null) { return 1; }   // missing values last, either direction
        if (y === null) { return -1; }
        var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
        return dir === "ascending" ? c : -c;
      });
      rows.forEach(function (tr) { tbody.appendChild(tr); });
    });
  });
  dataset.addEventListener("change", apply);
  protocol.addEventListener("change", apply);
  apply();
})();
"""


def _td(col: str, text: str, value: Any = None, *, cls: str | None = None, protocol: str | None = None,
        title: str | None = None) -> str:
    return (f"<td{H.attrs(data_col=col, data_value=H.number_attr(value), data_protocol=protocol, title=title)}"
            f"{H.attrs(**{'class': cls}) if cls else ''}>{text}</td>")


def to_html_page(frame: pd.DataFrame, columns: Sequence[str], primary: str | None, tracking_uri: str) -> str:
    """The leaderboard as one self-contained HTML page with dataset and protocol filters and
    sortable columns (inline JavaScript, no external resources)."""
    cost = _cost_label(frame)
    headers: list[tuple[str, str, bool]] = [
        ("rank", "#", True), ("method", "method", True), ("recipe", "recipe", True),
        ("backbone", "backbone", True), ("dataset", "dataset", True), ("epochs", "epochs", True),
        ("batch_size", "batch", True), ("augment", "augment", True),
        *((c, c, True) for c in columns),
        ("p_order", "P(order)", True), ("seeds", "seeds", False), ("device_hours", cost, True),
        ("images_per_s", "img/s", True), ("peak_memory_mb", "peak MiB", True),
        ("git_commits", "commit", False), ("runs", "MLflow runs", False),
    ]  # fmt: skip
    rows = []
    for _, r in frame.iterrows():
        cells = [_td("rank", H.esc(_int_text(r["rank"])), r["rank"], cls="num")]
        for c in (T.TAG_METHOD, T.TAG_RECIPE, T.TAG_BACKBONE, T.TAG_DATASET):
            cells.append(_td(c, H.esc(r[c])))
        cells.append(_td(T.TAG_EPOCHS, H.esc(_int_text(r[T.TAG_EPOCHS])), r[T.TAG_EPOCHS], cls="num"))
        cells.append(_td(T.TAG_BATCH_SIZE, H.esc(_int_text(r[T.TAG_BATCH_SIZE])), r[T.TAG_BATCH_SIZE], cls="num"))
        cells.append(_td(T.TAG_AUGMENT, H.esc(r[T.TAG_AUGMENT])))
        for col in columns:
            mean, lo, hi, n = r[f"{col}:mean"], r[f"{col}:lo"], r[f"{col}:hi"], r[f"{col}:n"]
            if pd.isna(mean):
                cells.append(_td(col, "—", protocol=col, cls="num"))
                continue
            text = f"{mean:.1f}"
            if not pd.isna(lo):
                text += f' <span class="ci">± {(hi - lo) / 2:.1f}</span>'
            text += f' <span class="ci">(n={n})</span>'
            if not pd.isna(r[f"{col}:best_epoch"]):
                text += f' <span class="best" title="best epoch, not the result">best epoch {r[f"{col}:best_epoch"]:.1f}</span>'
            interval = "" if pd.isna(lo) else f"95% CI [{lo:.2f}, {hi:.2f}]; "
            values = ", ".join(f"{v:.2f}" for v in r[f"{col}:values"])
            cells.append(_td(col, text, mean, cls="num", protocol=col, title=f"{interval}per seed: {values}"))
        p = r["p_order"]
        cells.append(_td("p_order", "" if pd.isna(p) else f"{p:.2f}", p, cls="num"))
        cells.append(_td("seeds", H.esc(r["seeds"])))
        for c, fmt in (("device_hours", "{:.3f}"), ("images_per_s", "{:.0f}"), ("peak_memory_mb", "{:.0f}")):
            cells.append(_td(c, "" if pd.isna(r[c]) else fmt.format(r[c]), r[c], cls="num"))
        cells.append(_td("git_commits", H.esc(",".join(x[:8] for x in str(r["git_commits"]).split(",") if x)),
                         cls="id", title=str(r["git_commits"])))
        ids = r["pretrain_run_ids"] or r["eval_run_ids"]
        cells.append(_td("runs", H.esc(ids), cls="id"))
        rows.append(cells)
    table = H.table(
        headers, rows, table_id="leaderboard", caption=H.esc(caption(frame, primary, tracking_uri)),
        row_attrs=[H.attrs(data_dataset=d) for d in frame[T.TAG_DATASET]],
        header_attrs={c: H.attrs(data_protocol=c) for c in columns},  # the filter hides columns
    )
    datasets = sorted({str(d) for d in frame[T.TAG_DATASET].dropna()})
    options = "".join(f'<option value="{H.esc(d)}">{H.esc(d)}</option>' for d in datasets)
    protocols = "".join(f'<option value="{H.esc(c)}">{H.esc(c)}</option>' for c in columns)
    controls = (
        '<div class="controls">'
        f'<label>dataset <select id="filter-dataset"><option value="">all</option>{options}</select></label>'
        f'<label>protocol <select id="filter-protocol"><option value="">all</option>{protocols}</select></label>'
        '<span id="shown" class="small"></span></div>'
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return H.page("sslbench leaderboard", f"generated {H.esc(stamp)}", controls + table, _SCRIPT)


def write_leaderboard(
    frame: pd.DataFrame, columns: Sequence[str], primary: str | None, out_dir: Path, tracking_uri: str,
    stem: str = "leaderboard",
) -> dict[str, Path]:
    """Writes ``{stem}.html`` (the page), ``{stem}.md`` (caption + table) and ``{stem}.csv``
    (every column; per-seed values as ``;``-separated text)."""
    out_dir = Path(out_dir)
    paths = {k: out_dir / f"{stem}.{k}" for k in ("html", "md", "csv")}
    atomic_write_text(paths["html"], to_html_page(frame, columns, primary, tracking_uri))
    md = f"# Leaderboard\n\n{caption(frame, primary, tracking_uri)}\n\n{to_markdown_table(frame, columns)}"
    atomic_write_text(paths["md"], md)
    flat = frame.copy()
    for c in [c for c in flat.columns if str(c).endswith(":values")]:
        flat[c] = flat[c].map(lambda v: ";".join(repr(float(x)) for x in v) if isinstance(v, list) else "")
    atomic_write_text(paths["csv"], flat.to_csv(index=False))
    return paths
