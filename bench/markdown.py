"""Markdown output: tables, and replacing one marked section of a document in place.

A section is everything between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; the rest of
the document (other people's sections, prose) is left byte for byte as it was.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


class SectionError(ValueError):
    """The markers of a section are missing, repeated or out of order."""


def begin_marker(name: str) -> str:
    return f"<!-- {name}:begin -->"


def end_marker(name: str) -> str:
    return f"<!-- {name}:end -->"


def replace_section(document: str, name: str, content: str) -> str:
    """``document`` with the inside of section ``name`` replaced by ``content``.

    A document without the section gets it appended at the end."""
    begin, end = begin_marker(name), end_marker(name)
    starts = [m.start() for m in re.finditer(re.escape(begin), document)]
    ends = [m.start() for m in re.finditer(re.escape(end), document)]
    body = content.strip("\n")
    block = f"{begin}\n{body}\n{end}"
    if not starts and not ends:
        sep = (
            ""
            if not document or document.endswith("\n\n")
            else ("\n" if document.endswith("\n") else "\n\n")
        )
        return f"{document}{sep}{block}\n"
    if len(starts) != 1 or len(ends) != 1:
        raise SectionError(f"section {name!r}: expected one {begin} and one {end}")
    if ends[0] < starts[0]:
        raise SectionError(f"section {name!r}: {end} comes before {begin}")
    return document[: starts[0]] + block + document[ends[0] + len(end) :]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; the first column left-aligned, the rest right."""
    align = [":---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
