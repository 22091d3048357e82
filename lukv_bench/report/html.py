"""``report.html``: the report as one self-contained page (plots embedded, tables sortable, no network).

:func:`write_html` renders the Markdown of ``report.md`` — the subset :mod:`lukv_bench.report.render`
writes: headings, paragraphs, one level of nested lists, pipe tables, image lines, ``**bold**`` and
```code``` — so that both files say the same thing. Images are read from their files and embedded as
base64 ``data:`` URIs; every table is sortable by clicking a header (a few lines of inline JavaScript:
numbers sort as numbers, empty cells and em dashes last). Each table carries ``data-section``, the
plain text of its section and subsection headings (``Task lb/lcc / Mean score``), for readers and tests.
"""

from __future__ import annotations

import base64
import html
import logging
import mimetypes
import re
from pathlib import Path

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
_HEADING = re.compile(r"^(?P<level>#{1,6}) (?P<text>.*)$")
_ITEM = re.compile(r"^(?P<indent> *)- (?P<text>.*)$")

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}
table{border-collapse:collapse;margin:1em 0;font-variant-numeric:tabular-nums;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .6em}td.num,th.num{text-align:right;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
code{background:#f3f3f3;padding:0 .2em}figure{margin:1em 0}img{max-width:100%}
"""

# Sorts a table's body rows by the clicked column: numbers (the leading number of a cell such as
# "0.086 [0.020, 0.220]", "~31,447" or "< 0.001") as numbers when every filled cell has one, text otherwise;
# empty cells and em dashes go last either way; equal keys keep their order.
_SCRIPT = """
(function () {
  function key(text) {
    var t = text.trim();
    if (t === "" || t === "\\u2014") return null;
    var m = t.replace(/,/g, "").replace(/\\u2212/g, "-").match(/^[~<>\\u00d7(\\s]*([-+]?\\d*\\.?\\d+(e[-+]?\\d+)?)/i);
    return m ? parseFloat(m[1]) : t;
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.addEventListener("click", function () {
      var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows).map(function (r, i) {
        return {row: r, i: i, k: key(r.cells[col] ? r.cells[col].textContent : "")};
      });
      var numeric = rows.every(function (r) { return r.k === null || typeof r.k === "number"; });
      rows.sort(function (a, b) {
        if (a.k === null || b.k === null) return (a.k === null) - (b.k === null) || a.i - b.i;
        var d = numeric ? a.k - b.k : String(a.k).localeCompare(String(b.k));
        return (asc ? d : -d) || a.i - b.i;
      });
      rows.forEach(function (r) { body.appendChild(r.row); });
    });
  });
})();
"""


def _inline(text: str) -> str:
    """Escape ``text`` and turn ``**bold**`` and ```code``` into HTML."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _plain(text: str) -> str:
    """A heading's text without its Markdown marks."""
    return re.sub(r"\*\*|`", "", text).strip()


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str], section: str) -> str:
    """A pipe table (header, alignment row, body) as a sortable HTML table."""
    head, align, body = _cells(lines[0]), _cells(lines[1]), [_cells(x) for x in lines[2:]]
    right = [a.endswith(":") for a in align] + [False] * len(head)
    cls = ["num" if r else "" for r in right]
    th = "".join(f'<th class="{c}" scope="col">{_inline(h)}</th>' for h, c in zip(head, cls))
    rows = "".join("<tr>" + "".join(f'<td class="{c}">{_inline(v)}</td>' for v, c in zip(r, cls)) + "</tr>\n"
                   for r in body)
    return (f'<table class="sortable" data-section="{html.escape(section)}">\n<thead><tr>{th}</tr></thead>\n'
            f"<tbody>\n{rows}</tbody></table>")


def _image(alt: str, src: str, base: Path) -> str:
    """A figure with the image file embedded as a data URI (its caption only, when the file is gone)."""
    path = base / src
    if not path.is_file():
        log.warning("%s is missing; report.html shows its caption only", path)
        return f"<p><em>{html.escape(alt)} (plot file {html.escape(src)} missing)</em></p>"
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _list(items: list[tuple[int, str]]) -> str:
    """``- item`` lines (indent, text) as a list with one nested level under the item before."""
    out, open_top, open_sub = ["<ul>"], False, False
    for indent, text in items:
        if indent:
            if not open_sub:
                out.append("<ul>")
                open_sub = True
            out.append(f"<li>{_inline(text)}</li>")
            continue
        if open_sub:
            out.append("</ul>")
            open_sub = False
        if open_top:
            out.append("</li>")
        out.append(f"<li>{_inline(text)}")
        open_top = True
    out += ["</ul>"] * open_sub + ["</li>"] * open_top + ["</ul>"]
    return "".join(out)


def markdown_to_html(markdown: str, base: Path) -> str:
    """The body of the page for the report's Markdown (images relative to ``base``)."""
    lines = markdown.splitlines()
    out: list[str] = []
    heads: dict[int, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := _HEADING.match(line):
            level = len(m["level"])
            heads = {k: v for k, v in heads.items() if k < level} | {level: _plain(m["text"])}
            out.append(f"<h{level}>{_inline(m['text'])}</h{level}>")
            i += 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            section = " / ".join(v for k, v in sorted(heads.items()) if k > 1)
            out.append(_table(lines[i:j], section))
            i = j
        elif m := _IMAGE.match(line.strip()):
            out.append(_image(m["alt"], m["src"], base))
            i += 1
        elif _ITEM.match(line):
            items = []
            while i < len(lines) and (m := _ITEM.match(lines[i])):
                items.append((len(m["indent"]), m["text"]))
                i += 1
            out.append(_list(items))
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not _HEADING.match(lines[j]) \
                    and not lines[j].startswith("|") and not _ITEM.match(lines[j]):
                j += 1
            out.append("<p>" + " ".join(_inline(x) for x in lines[i:j]) + "</p>")
            i = j
    return "\n".join(out)


def write_html(out_dir: Path, markdown: str, title: str) -> Path:
    """Write ``out_dir/report.html`` for the report's Markdown; returns its path."""
    body = markdown_to_html(markdown, out_dir)
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n<script>{_SCRIPT}</script>\n</body>\n</html>\n")
    path = out_dir / REPORT_HTML
    path.write_text(page, encoding="utf-8")
    return path
