"""A self-contained HTML page (inline CSS, no scripts, no network) that references PNGs beside it."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from jobs.eval.formats import NONE, count_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
img { max-width: 100%; display: block; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #8a5a00; } .origin { border-left: 4px solid #c77c00; padding-left: 0.8em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""

Cell = str | int | None  # floats are formatted by the caller (jobs/eval/formats.py): r and scores differ


def _cell(value: Cell) -> str:
    if value is None:
        return NONE
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return count_text(value)
    raise TypeError(f"table cell {value!r}: format it first (jobs/eval/formats.py)")


class Page:
    """Sections appended in order; :meth:`html` renders them. Every text is escaped."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = [f"<h1>{escape(title)}</h1>"]

    def heading(self, text: str) -> None:
        self._parts.append(f"<h2>{escape(text)}</h2>")

    def text(self, text: str, note: bool = False) -> None:
        self._parts.append(f'<p class="note">{escape(text)}</p>' if note else f"<p>{escape(text)}</p>")

    def origin(self, text: str) -> None:
        """A paragraph set apart: where the data came from and what the best score is."""
        self._parts.append(f'<p class="origin">{escape(text)}</p>')

    def image(self, src: str, alt: str) -> None:
        self._parts.append(f'<img src="{escape(src)}" alt="{escape(alt)}">')

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
        head = "".join(f"<th>{escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
        self._parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def details(self, summary: str, text: str) -> None:
        self._parts.append(f"<details><summary>{escape(summary)}</summary><pre>{escape(text)}</pre></details>")

    def html(self) -> str:
        body = "\n".join(self._parts)
        return (
            f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(self.title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
        )
