"""Rewrite one `## ` section of docs/BENCHMARKS.md and keep the other sections."""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def replace_section(title: str, lines: list[str], page: Path = BENCHMARKS_PAGE) -> None:
    """Replace the section headed by the line `title` on `page`, or append it.

    A section runs from its heading line to the next line that starts with
    `## `, or to the end of the page. A missing page is created with a
    `# Benchmarks` heading.
    """
    section = "\n".join(lines).strip("\n") + "\n"
    first_line = section.split("\n", 1)[0]
    if first_line != title:
        raise ValueError(
            f"Invalid section: its first line is {first_line!r}, expected the"
            f" heading {title!r}."
        )

    text = page.read_text(encoding="utf-8") if page.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        # A function as the replacement, so backslashes in the section stay literal.
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
