"""report.html: the report.md text as one self-contained HTML page (figures inlined as data URIs).

The Markdown is parsed by markdown-it-py (CommonMark + pipe tables, raw HTML off); the page opens
offline (no external assets). A `### label` heading directly followed by an image (ROC curves,
sample grids) becomes a captioned figure, and consecutive figures share one grid.
"""

from __future__ import annotations

import base64
import html
import os
from typing import Any, Optional

from markdown_it import MarkdownIt

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


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def _data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _inline_images(tokens: list[Any], base_dir: str) -> None:
    """Every image is inlined from base_dir as a data URI; one whose file is missing is dropped
    (a report never links to files beside it)."""
    for tok in tokens:
        if tok.type != "inline" or not tok.children:
            continue
        kept = []
        for child in tok.children:
            if child.type == "image":
                path = os.path.join(base_dir, str(child.attrGet("src")))
                if not os.path.isfile(path):
                    continue
                child.attrSet("src", _data_uri(path))
            kept.append(child)
        tok.children = kept


def _figure(md: MarkdownIt, tokens: list[Any], i: int) -> Optional[tuple[str, int]]:
    """At tokens[i], `### label` + a paragraph holding only an image: (figure HTML, tokens
    used); the HTML is empty when the image was dropped."""
    kinds = [t.type for t in tokens[i : i + 6]]
    if (
        kinds
        != [
            "heading_open",
            "inline",
            "heading_close",
            "paragraph_open",
            "inline",
            "paragraph_close",
        ]
        or tokens[i].tag != "h3"
    ):
        return None
    parts = [c for c in tokens[i + 4].children or [] if c.type != "softbreak"]
    if len(parts) > 1 or (parts and parts[0].type != "image"):
        return None
    if not parts:  # the image's file is missing
        return "", 6
    renderer: Any = md.renderer  # RendererHTML (the protocol lacks renderInline)
    caption = renderer.renderInline(tokens[i + 1].children or [], md.options, {})
    image = renderer.renderInline(parts, md.options, {})
    return f"<figure><figcaption>{caption}</figcaption>{image}</figure>", 6


def markdown_to_html(markdown: str, base_dir: str, title: str) -> str:
    """The page for `markdown` (report.md's text); images are read from base_dir and inlined."""
    md = _parser()
    tokens = md.parse(markdown)
    _inline_images(tokens, base_dir)
    body: list[str] = []
    figures: list[str] = []
    i = 0
    while i < len(tokens):
        fig = _figure(md, tokens, i)
        if fig is not None:
            figures += [fig[0]] if fig[0] else []
            i += fig[1]
            continue
        if figures:
            body.append('<div class="figs">' + "".join(figures) + "</div>")
            figures = []
        j, depth = i, 0
        while True:  # one top-level block: until its nesting closes
            depth += tokens[j].nesting
            j += 1
            if depth == 0:
                break
        body.append(md.renderer.render(tokens[i:j], md.options, {}))
        i = j
    if figures:
        body.append('<div class="figs">' + "".join(figures) + "</div>")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{html.escape(title)}'
        f"</title><style>{STYLE}</style></head><body>\n" + "".join(body) + "\n</body></html>\n"
    )
