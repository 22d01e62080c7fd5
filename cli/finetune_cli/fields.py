"""``finetune docs FIELD``: one field of the spec reference, or one section, for a terminal.

The full reference is a Markdown table of every field (``finetune docs`` alone), too wide
and too long to read in a terminal when the question is one field. This selects rows of
the same reference (:func:`finetune_api.docs.field_rows`, so the two never disagree) and
lays each out as a short block.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Sequence

from finetune_api.docs import FieldRow

WIDTH = 88


class UnknownField(LookupError):
    """No field matches; ``suggestions`` are the closest paths (possibly none)."""

    def __init__(self, query: str, suggestions: list[str]) -> None:
        super().__init__(query)
        self.query = query
        self.suggestions = suggestions


def _bare(path: str) -> str:
    """A path as a person may write it: without ``spec.`` and the ``[]`` of list items."""
    return path.removeprefix("spec.").replace("[]", "")


def select(rows: Sequence[FieldRow], query: str) -> list[FieldRow]:
    """The rows ``query`` names: a field and everything under it, written with or without
    the leading ``spec.`` (``training.learningRate``, ``spec.method.lora``); else the
    fields whose own name it is (``learningRate``). Raise :class:`UnknownField`."""
    wanted = _bare(query.strip().strip("."))
    chosen = [
        row for row in rows if _bare(row.path) == wanted or _bare(row.path).startswith(f"{wanted}.")
    ]
    if not chosen and "." not in wanted:
        chosen = [row for row in rows if _bare(row.path).rsplit(".", 1)[-1] == wanted]
    if chosen:
        return chosen
    known = [_bare(row.path) for row in rows]
    close = difflib.get_close_matches(wanted, known, n=3, cutoff=0.6)
    if not close:  # a misspelled leaf name: compare the last names only
        leaves = {_bare(row.path).rsplit(".", 1)[-1]: row.path for row in rows}
        close = [
            _bare(leaves[leaf]) for leaf in difflib.get_close_matches(wanted, list(leaves), n=3)
        ]
    raise UnknownField(query, [f"spec.{path}" for path in close])


def render(rows: Sequence[FieldRow]) -> str:
    """Each row as a block: the path, then type, default and allowed values, then the
    description wrapped to :data:`WIDTH`; Markdown backticks dropped."""
    blocks = []
    for row in rows:
        lines = [row.path]
        for label, value in (
            ("type", row.type),
            ("default", row.default),
            ("allowed", row.allowed),
        ):
            if value:
                lines.append(f"  {label + ':':<9}{_plain(value)}")
        if row.description:
            lines.extend(
                textwrap.wrap(
                    _plain(row.description),
                    WIDTH,
                    initial_indent="  ",
                    subsequent_indent="  ",
                    break_on_hyphens=False,
                )
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _plain(text: str) -> str:
    return text.replace("`", "").replace("\\|", "|")
