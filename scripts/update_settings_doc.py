"""Rewrite the settings table in docs/settings.md from the declarations."""

from __future__ import annotations

import re
from pathlib import Path

from digest.settings import markdown_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
text = DOC.read_text(encoding="utf-8")
table = re.compile(r"^\| setting \|.*?\n(?=\n)", re.MULTILINE | re.DOTALL)
DOC.write_text(table.sub(lambda _: markdown_table(), text, count=1), encoding="utf-8")
