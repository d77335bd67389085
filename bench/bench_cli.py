"""How fast `digest` commands answer: the median of N runs of each, as a user types them.

Goals (issue 15): `digest --help` ≤ 0.25 s; `digest lists list`, `digest subscribers show`,
`digest issues list` and `digest config` ≤ 0.5 s on an existing database; `digest serve`
ready to answer within 1.5 s.

Each command runs as `.venv/bin/digest …` (the console script a user runs) in a fresh
folder whose SQLite database already holds a list with a subscriber and a sent issue.
`digest serve` is timed from its start until GET /archive/weekly/1 answers.

Run: .venv/bin/python bench/bench_cli.py [RUNS]
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bytecode import compile_package

ROOT = Path(__file__).resolve().parent.parent
DIGEST = str(Path(sys.executable).parent / "digest")
COMMANDS = [
    (["--help"], 0.25),
    (["lists", "list"], 0.5),
    (["subscribers", "show", "reader@example.org"], 0.5),
    (["issues", "list"], 0.5),
    (["config"], 0.5),
]


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run([DIGEST, *argv], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_ready(env: dict[str, str], cwd: Path) -> float:
    """Seconds from starting `digest serve` until it answers a page."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([DIGEST, "serve", "--port", str(port)], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < 30:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/archive/weekly/1",
                                            timeout=1) as answer:
                    answer.read()
                return time.perf_counter() - started
            except OSError:
                time.sleep(0.01)
        raise SystemExit("digest serve did not answer within 30 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    compile_package()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        env["DIGEST_DATABASE_URL"] = f"sqlite:///{folder}/digest.db"
        # An existing database: a list, a subscriber, and a sent issue (the demo's feeds).
        subprocess.run([DIGEST, "demo", "--dir", str(folder)], env=env, cwd=folder,
                       check=True, capture_output=True)
        env["DIGEST_DATABASE_URL"] = f"sqlite:///{folder}/demo.db"
        subprocess.run([DIGEST, "subscribers", "add", "reader@example.org", "--list",
                        "weekly"], env=env, cwd=folder, check=True, capture_output=True)
        failed = False
        for argv, goal in COMMANDS:
            times = [timed(argv, env, folder) for _ in range(runs)]
            median = statistics.median(times)
            failed |= median > goal
            print(f"digest {' '.join(argv):40s} median {median:.3f} s of {runs} "
                  f"(min {min(times):.3f}, max {max(times):.3f}; goal ≤ {goal} s)")
        times = [serve_ready(env, folder) for _ in range(runs)]
        median = statistics.median(times)
        failed |= median > 1.5
        print(f"digest serve, until it answers a page    median {median:.3f} s of {runs} "
              f"(min {min(times):.3f}, max {max(times):.3f}; goal ≤ 1.5 s)")
    if failed:
        print("some command missed its goal")


if __name__ == "__main__":
    main()
