"""Rewrite the documentation site's generated sections: the spec and status field
references, the cross-field rules, the exit codes (from the contract) and the CLI
reference (from the command tree), each between its markers in its page.

Usage: python scripts/update_docs.py           (`make docs` runs it)
       python scripts/update_docs.py --check   (exit 1, naming the stale pages)

Only the text between a section's marker lines is rewritten; the prose around it is
the page's own. Running it twice changes nothing. tests/unit/test_docs.py fails when a
page and its generator disagree.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from finetune_api.docs import Section
from finetune_cli.reference import generated_sections

ROOT = Path(__file__).resolve().parent.parent


def regenerate(text: str, sections: list[Section]) -> str:
    """``text`` (one page) with each of its sections rewritten."""
    for section in sections:
        text = section.fill(text)
    return text


def main(argv: list[str]) -> int:
    check = "--check" in argv
    pages: dict[str, list[Section]] = defaultdict(list)
    for section in generated_sections():
        pages[section.page].append(section)
    stale = []
    for page, sections in pages.items():
        path = ROOT / page
        text = path.read_text(encoding="utf-8")
        new = regenerate(text, sections)
        if new != text:
            stale.append(page)
            if not check:
                path.write_text(new, encoding="utf-8")
    if check and stale:
        print("stale (run `make docs`): " + ", ".join(stale), file=sys.stderr)
        return 1
    for page in [] if check else stale:
        print(f"updated {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
