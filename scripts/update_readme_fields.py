"""Rewrite README.md's field reference (between the fields markers) from the models.

Usage: python scripts/update_readme_fields.py   (`make docs` runs it)
tests/unit/test_docs.py fails when the README and `finetune docs` disagree.
"""

from __future__ import annotations

from pathlib import Path

from finetune_api.docs import render_field_table

START, END = "<!-- fields:start -->\n", "<!-- fields:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> None:
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{START}{render_field_table()}{END}{tail}")


if __name__ == "__main__":
    main()
