"""Rewrite README.md's generated sections (field reference, spec rules, exit codes) from
the contract, each between its markers.

Usage: python scripts/update_readme_fields.py   (`make docs` runs it)
tests/unit/test_docs.py fails when the README and the contract disagree.
"""

from __future__ import annotations

from pathlib import Path

from finetune_api.docs import GENERATED_SECTIONS, render_section

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> None:
    text = README.read_text()
    for name, (start, end) in GENERATED_SECTIONS.items():
        head, found, rest = text.partition(start + "\n")
        if not found:
            raise SystemExit(f"README.md has no {start} line")
        _, _, tail = rest.partition(end)
        text = f"{head}{start}\n{render_section(name)}{end}{tail}"
    README.write_text(text)


if __name__ == "__main__":
    main()
