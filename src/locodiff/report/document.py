"""A tiny document model rendered twice: Markdown (figures linked) and one self-contained HTML
file (figures embedded), so the report reads the same in a repository and in a browser."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union


@dataclass
class Text:
    text: str  # a paragraph; `code` and **bold** are kept in Markdown, escaped in HTML


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""


@dataclass
class Figure:
    path: Path  # a PNG next to the report
    caption: str = ""


@dataclass
class Code:
    text: str  # preformatted (configs, commands)


@dataclass
class Html:
    html: str  # a ready block for the HTML file (an interactive part)
    markdown: str  # what the Markdown file says in its place


Block = Union[Text, Table, Figure, Code, Html]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def _cell(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def to_markdown(title: str, sections: Sequence[Section], root: Path) -> str:
    out = [f"# {title}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for b in sec.blocks:
            if isinstance(b, Text):
                out += [b.text, ""]
            elif isinstance(b, Code):
                out += ["```", b.text.rstrip(), "```", ""]
            elif isinstance(b, Html):
                out += [b.markdown, ""]
            elif isinstance(b, Table):
                if b.caption:
                    out += [b.caption, ""]
                out.append("| " + " | ".join(b.header) + " |")
                out.append("|" + "---|" * len(b.header))
                out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in b.rows]
                out.append("")
            else:
                rel = Path(b.path).relative_to(root) if Path(b.path).is_relative_to(root) else b.path
                out += [f"![{b.caption}]({rel.as_posix() if isinstance(rel, Path) else rel})", "", f"*{b.caption}*", ""]
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then turn `code` and **bold** into tags (the only inline markup the report uses)."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def anchor(title: str) -> str:
    """A section's id in the HTML report, as Markdown renderers make it from the heading."""
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).strip().replace(" ", "-")


FOLDED_LINES = 30  # preformatted blocks longer than this (the config) start folded


def _code(text: str) -> str:
    pre = f"<pre>{html.escape(text)}</pre>"
    lines = text.count("\n") + 1
    return pre if lines <= FOLDED_LINES else f"<details><summary>show ({lines} lines)</summary>{pre}</details>"


def _html_cell(text: str) -> str:
    """A table cell with its inline markup; words left-aligned, numbers right-aligned."""
    words = re.search(r"[A-Za-z]{2}", text) is not None
    return f"<td{' class=t' if words else ''}>{_inline(text)}</td>"


def to_html(title: str, sections: Sequence[Section]) -> str:
    contents = "".join(f"<li><a href='#{anchor(s.title)}'>{html.escape(s.title)}</a></li>" for s in sections)
    body = [f"<h1>{html.escape(title)}</h1>", f"<nav><ol class='toc'>{contents}</ol></nav>"]
    for sec in sections:
        body.append(f"<h2 id='{anchor(sec.title)}'>{html.escape(sec.title)}</h2>")
        for b in sec.blocks:
            if isinstance(b, Text):
                body.append(f"<p>{_inline(b.text)}</p>")
            elif isinstance(b, Code):
                body.append(_code(b.text))
            elif isinstance(b, Html):
                body.append(b.html)
            elif isinstance(b, Table):
                if b.caption:
                    body.append(f"<p class='cap'>{_inline(b.caption)}</p>")
                head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
                rows = "".join("<tr>" + "".join(_html_cell(_cell(v)) for v in r) + "</tr>" for r in b.rows)
                body.append(f"<table><tr>{head}</tr>{rows}</table>")
            else:
                data = base64.b64encode(Path(b.path).read_bytes()).decode()
                body.append(f"<figure><img src='data:image/png;base64,{data}'>"
                            f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.45}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 6px;"
             "text-align:right}td.t{text-align:left}th{background:#eee}img{max-width:100%;image-rendering:pixelated}"
             "figcaption,.cap{color:#555;font-size:90%}code{background:#f3f3f3}"
             "pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:85%}"
             ".toc{columns:2;font-size:90%}summary{cursor:pointer;color:#555}")
    # Marks on <body> how many images decoded, so a headless browser can check the page.
    check = ("<script>addEventListener('load',()=>{const i=[...document.images];"
             "document.body.dataset.images=i.length;"
             "document.body.dataset.imagesOk=i.filter(e=>e.complete&&e.naturalWidth>0).length})</script>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}{check}</body></html>")
