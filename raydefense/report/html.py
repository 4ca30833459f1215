"""report.html: the report.md text as one self-contained HTML page (figures inlined as data URIs).

Only the Markdown that the report writer emits is supported: `#` headings, paragraphs, `- ` lists,
pipe tables, `![alt](file.png)` images on their own line, and inline `code`, **bold**, *italic*.
No third-party Markdown package is needed, and the page opens offline (no external assets).
"""

from __future__ import annotations

import base64
import html
import os
import re

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#1b1f24;line-height:1.45}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3rem}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.88rem;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.3rem .55rem;text-align:left;vertical-align:top}
td:first-child{white-space:nowrap}
th{background:#f6f8fa}tr:nth-child(even) td{background:#fbfcfd}
code{background:#f3f4f6;padding:.1rem .3rem;border-radius:4px;font-size:.85em}
img{max-width:100%;border:1px solid #eaeef2;margin:.4rem 0}
.figs{display:flex;flex-wrap:wrap;gap:1rem}
.figs figure{margin:0;flex:0 1 calc(50% - .5rem);min-width:420px}
figcaption{font-weight:600;font-size:.9rem}
"""

_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])"), r"<em>\1</em>"),
]
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _table(lines: list[str]) -> str:
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
    out = ["<table><thead><tr>", *(f"<th>{_inline(c)}</th>" for c in head), "</tr></thead><tbody>"]
    for r in body:
        out += ["<tr>", *(f"<td>{_inline(c)}</td>" for c in r), "</tr>"]
    return "".join(out + ["</tbody></table>"])


def markdown_to_html(markdown: str, base_dir: str, title: str) -> str:
    """The page for `markdown` (report.md's text); images are read from base_dir and inlined.

    Consecutive `### label` + image sections (ROC curves, sample grids) become one figure grid.
    """
    lines = markdown.splitlines()
    body: list[str] = []
    figures: list[str] = []
    i = 0

    def flush_figures() -> None:
        if figures:
            body.append('<div class="figs">' + "".join(figures) + "</div>")
            figures.clear()

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        # "### label" directly followed by an image: a captioned figure
        nxt = [ln for ln in lines[i + 1 : i + 3] if ln.strip()]
        if line.startswith("### ") and nxt and (img := _IMAGE.match(nxt[0].strip())):
            alt, src = img.groups()
            path = os.path.join(base_dir, src)
            if os.path.isfile(path):
                figures.append(
                    f"<figure><figcaption>{_inline(line[4:])}</figcaption>"
                    f'<img alt="{html.escape(alt)}" src="{_data_uri(path)}"></figure>'
                )
            i = lines.index(nxt[0], i + 1) + 1
            continue
        flush_figures()
        m = re.match(r"^(#{1,6}) (.*)$", line)
        if m:
            level = len(m.group(1))
            body.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            body.append(_table(block))
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        elif img := _IMAGE.match(line.strip()):
            alt, src = img.groups()
            path = os.path.join(base_dir, src)
            if os.path.isfile(path):
                body.append(f'<img alt="{html.escape(alt)}" src="{_data_uri(path)}">')
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||- |!\[)", lines[i]):
                para.append(lines[i].strip())
                i += 1
            body.append(f"<p>{_inline(' '.join(para))}</p>")
    flush_figures()
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{html.escape(title)}'
        f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
