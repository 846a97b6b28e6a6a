"""Published results as data: one row per number, with its source, provenance and tolerance.

The ``*.csv`` files beside this module are the table (one schema, read together):

- ``papers.csv``: the papers' own numbers (ImageNet, CIFAR, STL-10, ImageNet-100) and their
  ablation tables, transcribed from ``shared/reference/PAPERS.md``;
- ``anchors.csv``: the frameworks' published small-scale tables (solo-learn, lightly,
  stable-pretraining), from ``shared/reference/ANCHORS.md``;
- ``sslbench.csv``: sslbench's own baselines, measured at a recorded commit on the embedded data
  (like timm's results CSVs), so a change that breaks a method shows up as "not reproduced".

:data:`COLUMNS` documents every column. :func:`load_reference` reads and validates all files and
fails with one paragraph naming the file, row and column of the first problem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sslbench.benchmark.errors import SSLBenchError

REFERENCE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Column:
    """One column of the reference table."""

    name: str
    kind: str  # "str", "int", "float"
    required: bool
    doc: str


COLUMNS: tuple[Column, ...] = (
    Column("id", "str", True, "unique slug across all files"),
    Column("method", "str", True, "sslbench method name (simclr, mocov2, byol, ...)"),
    Column("variant", "str", False, "what tells rows otherwise identical apart (width, K, LR scaling)"),
    Column("paper", "str", True, "the method's paper, short citation"),
    Column("venue", "str", False, "e.g. ICML 2020"),
    Column("dataset", "str", True, "the pretraining dataset (sslbench dataset name)"),
    Column("eval_dataset", "str", False, "the evaluation dataset when it differs (voc07, coco, ...)"),
    Column("backbone", "str", True, "sslbench / timm backbone name"),
    Column("epochs", "int", False, "pretraining epochs; empty when the source does not say"),
    Column("batch_size", "int", False, "pretraining batch size; empty when the source does not say"),
    Column("protocol", "str", True, "linear, linear-online, knn-k200-t0.1, knn-k20-t0.07, knn, semisup-*, ..."),
    Column("protocol_detail", "str", False, "what the protocol name does not say"),
    Column("metric", "str", True, "top1, top5, AP, AP50, ..."),
    Column("value", "float", True, "the number, in percent"),
    Column("std", "float", False, "the ± the source prints"),
    Column("n_runs", "int", False, "how many runs or seeds the number averages, when stated"),
    Column("source", "str", True, "paper table / figure or repository file that prints it"),
    Column("provenance", "str", True, "P, P-img, R, X, S (shared/reference/PAPERS.md legend) or M"),
    Column("flag", "str", False, "approximate and/or unverified, kept from the source"),
    Column("tolerance", "float", True, "absolute points within which a measurement matches"),
    Column("reported_by", "str", True, "paper, solo-learn, lightly, sslbench, or another paper"),
    Column("ablation", "str", False, "empty for a main result; else the ablated axis"),
    Column("augment", "str", False, "an ablation cell (baseline, -t, t1+t2, only:t), or the "
           "sslbench augmentation recipe a baseline row was measured with (then compared)"),
    Column("notes", "str", False, "caveats; the source document section"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
#: Protocol names a reference row may use; ``sslbench.protocols`` names are a subset.
PROTOCOLS: frozenset[str] = frozenset({
    "linear", "linear-augmented", "linear-online", "knn", "knn-k200-t0.1", "knn-k20-t0.07",
    "semisup-1pct", "semisup-10pct", "finetune", "detection-voc07", "detection-voc0712",
    "detection-coco", "segmentation", "classification-transfer",
})  # fmt: skip
METRICS: frozenset[str] = frozenset(
    {"top1", "top5", "AP", "AP50", "AP75", "AP_bb", "AP_mk", "mAP", "mIoU"}
)
PROVENANCE: frozenset[str] = frozenset({"P", "P-img", "R", "X", "S", "M"})
FLAGS: frozenset[str] = frozenset({"approximate", "unverified"})
_ID = re.compile(r"[a-z0-9][a-z0-9._+-]*")


def _fail(path: Path, line: int | None, problem: str) -> SSLBenchError:
    where = f"{path.name}, line {line}" if line is not None else path.name
    return SSLBenchError(
        f"The reference table {where} is invalid: {problem}.",
        f"Fix the row in {path} (columns: {', '.join(COLUMN_NAMES)}; documented in "
        "sslbench.results.reference.COLUMNS).",
    )


def _read(path: Path) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _fail(path, None, f"not a readable CSV ({exc})") from exc
    if tuple(raw.columns) != COLUMN_NAMES:
        raise _fail(path, 1, f"the header is {list(raw.columns)}")
    frame = raw.apply(lambda col: col.str.strip())
    for i, row in frame.iterrows():
        line = int(str(i)) + 2  # 1-based, after the header
        for col in COLUMNS:
            value = row[col.name]
            if col.required and not value:
                raise _fail(path, line, f"'{col.name}' is empty")
            if value and col.kind in ("int", "float"):
                try:
                    number = float(value)
                except ValueError:
                    raise _fail(path, line, f"'{col.name}' = {value!r} is not a number") from None
                if col.kind == "int" and not number.is_integer():
                    raise _fail(path, line, f"'{col.name}' = {value!r} is not an integer")
        checks = (
            (_ID.fullmatch(row["id"]) is not None, f"id {row['id']!r} is not a lowercase slug"),
            (row["protocol"] in PROTOCOLS, f"protocol {row['protocol']!r} is not one of {sorted(PROTOCOLS)}"),
            (row["metric"] in METRICS, f"metric {row['metric']!r} is not one of {sorted(METRICS)}"),
            (row["provenance"] in PROVENANCE, f"provenance {row['provenance']!r} is not one of {sorted(PROVENANCE)}"),
            (all(f in FLAGS for f in row["flag"].split(";") if f), f"flag {row['flag']!r} is not a ;-list of {sorted(FLAGS)}"),
            (float(row["tolerance"]) > 0, "tolerance must be > 0"),
            (0 <= float(row["value"]) <= 100, f"value {row['value']} is not a percentage"),
        )  # fmt: skip
        for ok, problem in checks:
            if not ok:
                raise _fail(path, line, problem)
    frame.insert(0, "file", str(path) if path.parent != REFERENCE_DIR else path.name)
    return frame


def load_reference(directory: Path | None = None, *, extra: Sequence[Path] = ()) -> pd.DataFrame:
    """Every reference row of every ``*.csv`` in ``directory`` (default: this package), validated.

    Args:
        directory: the folder of reference CSVs (default: sslbench's own).
        extra: more folders whose CSVs are added (a user's own rows); ids must stay unique.

    Returns:
        A frame with a ``file`` column and then :data:`COLUMN_NAMES`; ``epochs``, ``batch_size``
        and ``n_runs`` are nullable Int64, ``value``, ``std`` and ``tolerance`` float, empty text
        is ``""``. Sorted by file, then as written.

    Raises:
        SSLBenchError: no CSV files, a malformed row (file, line and column named), or an id
            used twice.
    """
    directory = REFERENCE_DIR if directory is None else Path(directory)
    paths: list[Path] = []
    for folder in (directory, *map(Path, extra)):
        found = sorted(folder.glob("*.csv")) if folder.is_dir() else []
        if not found:
            raise SSLBenchError(
                f"No reference tables (*.csv) in {folder}.",
                "Give a folder that holds reference CSVs with the header of "
                "sslbench.results.reference.COLUMN_NAMES (or reinstall sslbench for its own).",
            )
        paths.extend(found)
    frame = pd.concat([_read(p) for p in paths], ignore_index=True)
    dup = frame[frame["id"].duplicated(keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        files = sorted(set(dup[dup["id"] == first["id"]]["file"]))
        raise _fail(Path(files[0]), None, f"id {first['id']!r} is used more than once ({files})")
    for col in COLUMNS:
        if col.kind == "int":
            frame[col.name] = pd.to_numeric(frame[col.name].replace("", None)).astype("Int64")
        elif col.kind == "float":
            frame[col.name] = pd.to_numeric(frame[col.name].replace("", None)).astype(float)
    return frame
