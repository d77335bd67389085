"""Run every benchmark in bench/ and print its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("bench_render.py", "bench_collect.py"):
    subprocess.run([sys.executable, str(HERE / script)], check=True)
pg = os.environ.get("DIGEST_TEST_POSTGRES_URL")
if pg:
    print("(PostgreSQL figures need a fresh schema; see docs/benchmarks.md)")
