"""Self-contained HTML pages: one file, inline CSS and JavaScript, no network fetches.

Shared by the reproduction report and the leaderboard. Every value goes through
:func:`html.escape`; numbers carry their exact value in ``data-value`` so sorting never parses
formatted text and a test can compare the page with the frame it came from.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #1b1f24; }
h1 { font-size: 1.35rem; margin: 0 0 .3rem; } .meta { color: #57606a; margin: 0 0 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1.2rem; font-size: 13px; }
.caption { color: #57606a; max-width: 72rem; margin: .3rem 0; }
th, td { border-bottom: 1px solid #d0d7de; padding: .3rem .55rem; text-align: left; vertical-align: top; white-space: nowrap; }
th { background: #f6f8fa; position: sticky; top: 0; white-space: nowrap; }
th.sortable { cursor: pointer; user-select: none; } th.sortable:after { content: " \\2195"; color: #8c959f; }
th[aria-sort="ascending"]:after { content: " \\2191"; color: #1b1f24; }
th[aria-sort="descending"]:after { content: " \\2193"; color: #1b1f24; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.id, .small { font-family: ui-monospace, monospace; font-size: 12px; color: #57606a; }
.ci { color: #57606a; font-size: 12px; } .best { color: #57606a; font-size: 12px; font-style: italic; }
.v-reproduced { background: #dafbe1; } .v-within { background: #fff8c5; }
.v-not { background: #ffebe9; } .v-nc { background: #f6f8fa; color: #57606a; }
.controls { display: flex; gap: 1rem; flex-wrap: wrap; align-items: center; margin: .5rem 0; }
label { color: #57606a; } select { font: inherit; }
"""


def esc(value: Any) -> str:
    """HTML-escaped text of ``value``; None and NaN are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return html.escape(str(value), quote=True)


def attrs(**values: Any) -> str:
    """`` key="value"`` pairs (underscores become dashes), skipping None."""
    return "".join(
        f' {k.replace("_", "-")}="{esc(v)}"' for k, v in values.items() if v is not None
    )


def number_attr(value: Any) -> str | None:
    """A number as ``repr`` text for ``data-value`` (exact round trip), None when missing."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else repr(x)


def page(title: str, meta: str, body: str, script: str = "") -> str:
    """A complete HTML5 document with the shared stylesheet and an optional inline script."""
    js = f"<script>\n{script}\n</script>\n" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # No external requests of any kind: the page works offline and leaks nothing.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n<p class=\"meta\">{meta}</p>\n{body}\n{js}</body>\n</html>\n"
    )


def table(
    headers: Sequence[tuple[str, str, bool]], rows: Sequence[Sequence[str]], *,
    table_id: str, caption: str = "", row_attrs: Sequence[str] | None = None,
    header_attrs: Mapping[str, str] | None = None,
) -> str:
    """A ``<table>`` from pre-rendered ``<td>`` cells.

    Args:
        headers: (column key, label, sortable) per column; the key is the ``data-col``.
        rows: each row's ``<td>...</td>`` strings (already escaped by the caller).
        table_id: the element id.
        caption: escaped caption text.
        row_attrs: per row, extra ``<tr>`` attributes (from :func:`attrs`).
        header_attrs: per column key, extra ``<th>`` attributes (from :func:`attrs`).
    """
    extra = header_attrs or {}
    head = "".join(
        f'<th data-col="{esc(k)}"{extra.get(k, "")}{" class=sortable" if s else ""} scope="col">'
        f"{esc(label)}</th>"
        for k, label, s in headers
    )
    trs = row_attrs or [""] * len(rows)
    body = "\n".join(f"<tr{a}>{''.join(cells)}</tr>" for a, cells in zip(trs, rows, strict=True))
    cap = f'<p class="caption">{caption}</p>\n' if caption else ""
    return (
        f'{cap}<table id="{esc(table_id)}"><thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table>"
    )
