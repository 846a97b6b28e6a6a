"""Comparison tables from aggregated results: a wide table (Markdown) and the long frame (CSV)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from sslbench.benchmark.errors import SSLBenchError

PROTOCOL_COLUMN = "protocol"
MISSING_CELL = "—"  # no run for that configuration and protocol


def _key_columns(agg: pd.DataFrame) -> list[str]:
    """The group-key columns of an aggregated frame (all but the statistics)."""
    return [
        c for c in agg.columns if c not in ("n", "seeds") and not str(c).endswith(("_mean", "_std"))
    ]


def format_cell(mean: float, std: float, n: int) -> str:
    """``"86.3 ± 0.4 (n=3)"``, or ``"86.3 (n=1)"`` when there is no std (one seed).

    Args:
        mean: the mean over seeds.
        std: the standard deviation over seeds (NaN when n == 1).
        n: the number of seeds.
    """
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING_CELL
    if std is None or pd.isna(std):
        return f"{mean:.1f} (n={n})"
    return f"{mean:.1f} ± {std:.1f} (n={n})"


def comparison_table(agg: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """One row per configuration, one column per protocol, cells ``"86.3 ± 0.4 (n=3)"``.

    Rows are keyed by every group-key column of ``agg`` except ``protocol`` (by default method,
    dataset, backbone, batch_size, epochs) and sorted by them; protocol columns are sorted by
    name. A configuration without a run under some protocol shows ``"—"``.

    Args:
        agg: the frame :func:`sslbench.results.aggregate.aggregate` returns.
        metric: which metric to show (needs ``{metric}_mean`` and ``{metric}_std``).
    """
    mean_col, std_col = f"{metric}_mean", f"{metric}_std"
    if PROTOCOL_COLUMN not in agg.columns or mean_col not in agg.columns:
        raise SSLBenchError(
            f"Cannot build a comparison table of '{metric}': the aggregated results need the "
            f"columns '{PROTOCOL_COLUMN}' and '{mean_col}'.",
            f"Aggregate by protocol and include '{metric}' in the metrics. "
            f"Columns present: {', '.join(map(str, agg.columns))}.",
        )
    rows = [c for c in _key_columns(agg) if c != PROTOCOL_COLUMN]
    std = agg[std_col] if std_col in agg.columns else pd.Series(float("nan"), index=agg.index)
    protocol = agg[PROTOCOL_COLUMN].astype(object).where(agg[PROTOCOL_COLUMN].notna(), "(none)")
    protocols = sorted(set(protocol), key=str)
    table: dict[tuple[Any, ...], dict[str, Any]] = {}
    for i in agg.index:
        key = tuple(None if pd.isna(agg.at[i, c]) else agg.at[i, c] for c in rows)
        row = table.setdefault(
            key, {**dict(zip(rows, key, strict=True)), **dict.fromkeys(protocols, MISSING_CELL)}
        )
        row[protocol[i]] = format_cell(agg.at[i, mean_col], std[i], int(agg.at[i, "n"]))
    wide = pd.DataFrame(list(table.values()), columns=[*rows, *protocols])
    if rows:
        wide = wide.sort_values(rows, na_position="last", kind="stable", ignore_index=True)
        for c in rows:  # keep integer keys integer (sorting and construction may upcast)
            wide[c] = wide[c].astype(agg[c].dtype)
    return wide


def _cell_text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown pipe table (no ``tabulate`` needed).

    A non-default index is written as leading columns. Cells are padded so the source lines up.

    Args:
        table: any DataFrame, e.g. from :func:`comparison_table`.
    """
    if not isinstance(table.index, pd.RangeIndex):
        table = table.reset_index()
    header = [_cell_text(c) for c in table.columns]
    body = [[_cell_text(v) for v in row] for row in table.itertuples(index=False, name=None)]
    widths = [max([3, len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)]) + "\n"


def write_tables(
    agg: pd.DataFrame, out_dir: Path, stem: str = "results", metric: str = "top1"
) -> dict[str, Path]:
    """Writes ``{stem}.md`` (the comparison table) and ``{stem}.csv`` (the long frame).

    Args:
        agg: the frame :func:`sslbench.results.aggregate.aggregate` returns.
        out_dir: created if missing.
        stem: the file name without extension.
        metric: the metric shown in the Markdown table.

    Returns:
        ``{"md": path, "csv": path}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    caption = (
        f"**{metric}** (%) per protocol: mean ± std (ddof=1) over seeds, n = number of seeds. "
        "Final-epoch numbers."
    )
    md.write_text(f"{caption}\n\n{to_markdown(comparison_table(agg, metric))}", encoding="utf-8")
    agg.to_csv(csv, index=False)
    return {"md": md, "csv": csv}
