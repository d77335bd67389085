"""Run every benchmark in bench/ and print its figures (docs/benchmarks.md has them).

BENCH_SEND_N sets the audience of the send benchmark (default 1,000,000; populating it
takes a minute or two). BENCH_POSTGRES_URL also runs collect and send on PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True)


run(str(HERE / "bench_render.py"))
run(str(HERE / "bench_collect.py"))
run(str(HERE / "bench_smtp.py"))
n = os.environ.get("BENCH_SEND_N", "1000000")
run(str(HERE / "bench_send.py"), n, "sqlite", "2")
pg = os.environ.get("BENCH_POSTGRES_URL")
if pg:
    run(str(HERE / "bench_collect.py"), pg)
    run(str(HERE / "bench_send.py"), n, pg, "2")
