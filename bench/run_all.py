"""Run every benchmark in bench/ and print its figures (docs/benchmarks.md has them).

BENCH_SEND_N sets the audience of the send benchmark (default 1,000,000; importing it
takes about 20 s). BENCH_POSTGRES_URL also runs collect, import and send on PostgreSQL
(give it a database, or a schema through search_path, that may be filled).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True)


run(str(HERE / "bench_cli.py"))
run(str(HERE / "bench_render.py"))
run(str(HERE / "bench_collect.py"))
run(str(HERE / "bench_smtp.py"))
run(str(HERE / "bench_import.py"), "1000000")
n = os.environ.get("BENCH_SEND_N", "1000000")
for size in ("10000", "100000", n):
    run(str(HERE / "bench_send.py"), size, "sqlite", "1")
run(str(HERE / "bench_send.py"), n, "sqlite", "2")
pg = os.environ.get("BENCH_POSTGRES_URL")
if pg:
    run(str(HERE / "bench_collect.py"), pg)
    run(str(HERE / "bench_import.py"), "1000000", pg)
    run(str(HERE / "bench_send.py"), n, pg, "2")
