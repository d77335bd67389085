"""Import a CSV of N subscribers through the CLI, as a user does.

Goal (issue 15): 1,000,000 rows into an existing list in ≤ 30 s on SQLite and on
PostgreSQL, with the same guarantees as ever (rejects by line, never reviving, the same
file twice changes nothing); bounded memory.

Run: .venv/bin/python bench/bench_import.py [N] [sqlite|DATABASE_URL]
Each step is `digest …` in a fresh process: `digest lists create --list weekly`, then
`digest subscribers import people.csv --list weekly` twice (the second changes nothing).
The CSV has 97 domains and 0–3 of 8 keywords a row.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak MB, its output)."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    output = child.stdout.read().decode() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(argv)} failed:\n{output[-2000:]}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, output


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    given = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "sqlite" else None
    keywords = ["Iran", "Syria", "Ukraine", "Russia", "Turkey", "Iraq", "Lebanon", "Yemen"]
    rng = random.Random(1)
    digest = [sys.executable, "-m", "digest"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = given or f"sqlite:///{folder}/import.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        env.update({"PYTHONPATH": str(ROOT), "DIGEST_DATABASE_URL": url, "COLUMNS": "200"})
        with open(folder / "people.csv", "w", encoding="utf-8") as out:
            out.write("email,name,keywords\n")
            for i in range(n):
                chosen = ";".join(rng.sample(keywords, rng.randint(0, 3)))
                out.write(f"Reader.{i}@Example{i % 97}.org,Reader {i},{chosen}\n")
        run([*digest, "lists", "create", "--list", "weekly"], env, folder)
        command = [*digest, "subscribers", "import", "people.csv", "--list", "weekly"]
        took, peak, output = run(command, env, folder)
        kind = url.split(":")[0]
        print(f"import {n:,} rows ({kind}): {took:.1f} s, peak memory {peak:.0f} MB "
              f"(goal ≤ 30 s for 1,000,000)\n  {output.strip().splitlines()[-1]}")
        took, peak, output = run(command, env, folder)
        print(f"the same file again: {took:.1f} s, peak {peak:.0f} MB\n  "
              f"{output.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
