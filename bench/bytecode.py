"""Bytecode for the checkout's package before a benchmark, as a user's install has it.

pip writes it when it installs the wheel, and Python writes it on a checkout's first run,
except where PYTHONDONTWRITEBYTECODE is set (as on the machines these benchmarks ran on):
there every `digest` command would compile the package from source, ~0.1 s each, which no
user pays twice. `make demo` and `make bench` write it too.
"""

from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compile_package() -> None:
    for folder in ("digest", "subscribers", "schedules"):
        compileall.compile_dir(ROOT / folder, quiet=1)
