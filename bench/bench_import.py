"""Import a CSV of N subscribers (goal for issue 4: 1,000,000 rows in ≤ 60 s, bounded memory).

Run: .venv/bin/python bench/bench_import.py [N]
"""

from __future__ import annotations

import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.db import open_database
from subscribers.imports import import_csv
from subscribers.lists import create_list


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    keywords = ["Iran", "Syria", "Ukraine", "Russia", "Turkey", "Iraq", "Lebanon", "Yemen"]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "people.csv"
        with open(path, "w", encoding="utf-8") as out:
            out.write("email,name,keywords\n")
            for i in range(n):
                chosen = ";".join(rng.sample(keywords, rng.randint(0, 3)))
                out.write(f"Reader.{i}@Example{i % 97}.org,Reader {i},{chosen}\n")
        db = open_database(f"sqlite:///{tmp}/import.db")
        create_list(db, "weekly")
        started = time.perf_counter()
        report = import_csv(db, "weekly", path)
        elapsed = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"import {n:,} rows (SQLite): {elapsed:.1f} s, {report.added:,} added, "
              f"{len(report.rejected)} rejected; peak memory {peak:.0f} MB")
        started = time.perf_counter()
        again = import_csv(db, "weekly", path)
        print(f"the same file again: {time.perf_counter() - started:.1f} s, "
              f"{again.unchanged:,} unchanged, {again.added} added")


if __name__ == "__main__":
    main()
