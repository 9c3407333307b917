"""A small document writer: collect headings, paragraphs, tables and images once, render Markdown and HTML.

Paragraphs and table cells may use the inline Markdown the report needs (`code`, **bold**, *emphasis*);
:func:`inline_html` renders it for HTML. Images are referenced by file name, so the document and its images
live in one directory.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Sequence

HTML_STYLE = (
    "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}"
    "th{background:#eee}img{max-width:100%;border:1px solid #ddd}code{background:#f4f4f4}</style>"
)


class Document:
    """Blocks in order: ``("h", level, text)``, ``("p", text)``, ``("table", header, rows)``, ``("img", name, alt)``."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", list(header), [list(map(str, r)) for r in rows]))

    def img(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", path.name, alt))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                esc = lambda s: s.replace("|", "\\|")  # noqa: E731
                out.append("| " + " | ".join(map(esc, b[1])) + " |")
                out.append("|" + "|".join("---" for _ in b[1]) + "|")
                out += ["| " + " | ".join(map(esc, r)) + " |" for r in b[2]]
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(title)}</title>", HTML_STYLE,
               "</head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{inline_html(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in b[1]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in r) + "</tr>" for r in b[2]]
                out.append("</table>")
            elif b[0] == "img":
                out.append(f"<p><img src='{e(b[1])}' alt='{e(b[2])}'></p>")
        out.append("</body></html>")
        return "\n".join(out)


def inline_html(text: str) -> str:
    """Escape, then render the inline Markdown: `code`, **bold**, *emphasis*."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"(?<![*\w])\*([^*]+)\*(?![*\w])", r"<i>\1</i>", text)


def slug(text: str) -> str:
    """``text`` as a file-name part: runs of anything but letters, digits, ``_.-`` become one ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
