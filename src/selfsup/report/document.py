"""One document, two renderings: a self-contained HTML page (figures inlined as base64 PNG, no
script, no server, no network) and markdown beside its PNG files.

Both come from the same list of parts, so the page and the markdown never disagree.
"""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..figures import printable

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #1d2433; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #dde3ee; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; color: #23407a; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #d5dbe6; padding: .25rem .6rem; text-align: left; }
th { background: #eef2f8; }
tr:nth-child(even) td { background: #fafbfd; }
figure { margin: .8rem 0 1.4rem; }
figure img { max-width: 100%; border: 1px solid #e3e7ef; }
figcaption { font-size: .85rem; color: #555; }
pre { background: #f5f7fa; border: 1px solid #e3e7ef; padding: .6rem; overflow-x: auto; font-size: .8rem; }
.note { color: #6a4d00; background: #fff8e1; border-left: 4px solid #f0c040; padding: .4rem .7rem; }
nav a { margin-right: .8rem; }
"""


@dataclass
class Document:
    """Parts appended in reading order; ``write`` renders both files."""

    title: str
    parts: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(("heading", text))

    def paragraph(self, text: str) -> None:
        self.parts.append(("paragraph", text))

    def note(self, text: str) -> None:
        self.parts.append(("note", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.parts.append(("bullets", list(items)))

    def table(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        if rows:
            self.parts.append(("table", (rows, columns)))

    def figure(self, path: Path, caption: str) -> None:
        """A PNG file already written (inlined in the HTML, linked from the markdown)."""
        self.parts.append(("figure", (Path(path), caption)))

    def code(self, summary: str, text: str) -> None:
        """Preformatted text (a config, an environment), folded away in the HTML."""
        self.parts.append(("code", (summary, text)))

    def link(self, text: str, target: Path) -> None:
        self.parts.append(("link", (text, Path(target))))

    # ------------------------------------------------------------------ rendering
    def to_html(self, base: Path) -> str:
        escape = html.escape
        body = [f"<h1>{escape(self.title)}</h1>"]
        for kind, payload in self.parts:
            if kind == "heading":
                body.append(f"<h2>{escape(payload)}</h2>")
            elif kind == "paragraph":
                body.append(f"<p>{escape(payload)}</p>")
            elif kind == "note":
                body.append(f'<p class="note">{escape(payload)}</p>')
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{escape(item)}</li>" for item in payload) + "</ul>")
            elif kind == "table":
                rows, columns = payload
                head = "".join(f"<th>{escape(c)}</th>" for c in columns)
                cells = ["<tr>" + "".join(f"<td>{escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>"
                         for row in rows]
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(cells)}</tbody></table>")
            elif kind == "figure":
                path, caption = payload
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
                            f"<figcaption>{escape(caption)}</figcaption></figure>")
            elif kind == "code":
                summary, text = payload
                body.append(f"<details><summary>{escape(summary)}</summary><pre>{escape(text)}</pre></details>")
            elif kind == "link":
                text, target = payload
                body.append(f'<p><a href="{escape(_relative(target, base))}">{escape(text)}</a></p>')
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{escape(self.title)}</title><style>{STYLE}</style></head>\n<body>\n"
                + "\n".join(body) + "\n</body></html>\n")

    def to_markdown(self, base: Path) -> str:
        from ..tables import markdown_table
        lines = [f"# {self.title}", ""]
        for kind, payload in self.parts:
            if kind == "heading":
                lines += [f"## {payload}", ""]
            elif kind in ("paragraph", "note"):
                lines += [payload if kind == "paragraph" else f"> {payload}", ""]
            elif kind == "bullets":
                lines += [f"- {item}" for item in payload] + [""]
            elif kind == "table":
                rows, columns = payload
                lines += [markdown_table([{c: _cell(row.get(c)) for c in columns} for row in rows], columns), ""]
            elif kind == "figure":
                path, caption = payload
                lines += [f"![{caption}]({_relative(path, base)})", ""]
            elif kind == "code":
                summary, text = payload
                lines += [f"<details><summary>{summary}</summary>", "", "```", text.rstrip(), "```", "", "</details>",
                          ""]
            elif kind == "link":
                text, target = payload
                lines += [f"[{text}]({_relative(target, base)})", ""]
        return "\n".join(lines)

    def write(self, html_path: Path, markdown_path: Path) -> None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(printable(self.to_html(html_path.parent)), encoding="utf-8")  # names from disk
        markdown_path.write_text(printable(self.to_markdown(markdown_path.parent)), encoding="utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _relative(target: Path, base: Path) -> str:
    """``target`` relative to ``base`` as a URL path (a folder named "a #1" is a link, not a fragment)."""
    return quote(Path(os.path.relpath(Path(target).resolve(), Path(base).resolve())).as_posix())
