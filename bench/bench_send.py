"""Send one issue to N subscribers exactly as a user does, beside the floor in the same run.

Goals (issue 15), with default settings: ours ÷ floor ≤ 1.5 at 100,000 and 1,000,000
with one process, ≤ 2 at 10,000; `--jobs 2` no slower than one process; peak memory of
the sending processes ≤ 200 MB at 1,000,000.

What runs, each a `digest` command in a fresh process, in a fresh folder:
1. the four bundled sample feeds are served on 127.0.0.1; `digest feeds add` each,
   `digest lists create weekly`, `digest subscribers import people.csv --list weekly`
   (a generated CSV of N rows: email, name), `digest collect`, and `digest preview` (for
   the floor's content);
2. the floor, in a fresh process: build, serialize and POST the same requests (this
   issue's subject, text and HTML, 1000 personalizations each with the same
   substitutions, headers and custom_args) with the same client to the same stand-in;
3. `digest send --list weekly --yes` (which collects first, as the scheduled job does)
   with nothing set but what a SendGrid user must set: the transport, the API key and,
   here, the stand-in's address. The cache (compiled templates, inlined emails) is a
   folder of the run's own, as a weekly send finds it: templates compiled by an earlier
   run (the preview), this issue's email never inlined before (what the preview inlined
   is removed). With ``--after-preview`` it is kept, as when an editor previewed the
   issue before it went out;
4. the floor again. The ratios are ours ÷ the mean of the two floors: this machine's speed
   drifts by ±15 % over minutes. With ``--repeat=K`` (SQLite) steps 3 and 4 run K times,
   each send from the same database as the first, and the ratios are of medians.
   With ``--scheduled`` (SQLite) step 3 is a slot of `digest scheduler` instead, timed
   from its start to its end as the scheduler records them: the send a scheduled job
   makes in a process that is already running.

Ours is timed from the process's start to its exit, so the floor is given both ways: its
sending loop alone (the strict figure), and the whole script from start to exit
(interpreter start-up and `import sendgrid`, ~0.1 s here), as ours is. Below 100,000 it
also prints what a fresh interpreter takes only to import the libraries a send needs
(:data:`STACK`), against the floor script: the part of the 10,000 goal no code of ours
can reach.

The stand-in runs in its own process, answers 202 at once and counts recipients.

Run: .venv/bin/python bench/bench_send.py [N] [sqlite|DATABASE_URL] [JOBS]
     [--after-preview] [--repeat=K] [--scheduled]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "SG.bench"


def standin(port_queue: multiprocessing.Queue, counter: object) -> None:  # type: ignore[type-arg]
    """A SendGrid stand-in that answers 202 at once and counts recipients."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            # Counting "to" objects without a full parse keeps the stand-in cheap.
            with counter.get_lock():  # type: ignore[attr-defined]
                counter.value += body.count(b'"to":')  # type: ignore[attr-defined]
            self.send_response(202)
            self.send_header("X-Message-Id", "bench")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 64
        daemon_threads = True

    httpd = Server(("127.0.0.1", 0), Handler)
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def floor(n: int, port: int, subject: str, text: str, html: str) -> float:
    """Build, serialize and POST the same requests with the same client; no database.

    The same shape as ours: every field the transport sends, links of the same length.
    """
    from sendgrid import SendGridAPIClient
    client = SendGridAPIClient(KEY, host=f"http://127.0.0.1:{port}")
    # Substitution keys of the shape and length the product's slots have (a code and a
    # 22-character tag each), so both bodies are the same size.
    SLOT, TAG = "__DIGEST_", "t" * 22
    started = time.perf_counter()
    for start in range(0, n, 1000):
        people = []
        for i in range(start, min(n, start + 1000)):
            url = f"http://localhost:8000/u/{i}.{'s' * 27}"
            people.append({"to": [{"email": f"reader{i}@example.org", "name": f"Reader {i}"}],
                           "substitutions": {f"{SLOT}U{TAG}__": url, f"{SLOT}u{TAG}__": url,
                                             f"{SLOT}P{TAG}__": url, f"{SLOT}p{TAG}__": url,
                                             f"{SLOT}N{TAG}__": f"Reader {i}",
                                             f"{SLOT}n{TAG}__": f"Reader {i}"},
                           "headers": {"List-Unsubscribe": f"<{url}>",
                                       "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
                           "custom_args": {"delivery_id": str(i), "subscriber_id": str(i)}})
        body = {"personalizations": people,
                "from": {"email": "digest@example.com", "name": "Recap Digest"},
                "subject": subject, "content": [{"type": "text/plain", "value": text},
                                                {"type": "text/html", "value": html}],
                "headers": {"List-Id": "The Weekly Recap <weekly.example.com>",
                            "Precedence": "bulk", "Auto-Submitted": "auto-generated"},
                "categories": ["weekly"], "custom_args": {"issue_id": "1", "list": "weekly"}}
        client.client.mail.send.post(request_body=body, timeout=30)
    return time.perf_counter() - started


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of one process, or of the whole machine when no pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    if pid is None:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
        return (user + nice + system + irq + softirq) / ticks
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(stat[11]) + int(stat[12])) / ticks


def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float, str]:
    """Run a command; return (wall seconds, CPU seconds, peak MB of it and its children,
    its standard error). Fails loudly when the command does."""
    started = time.perf_counter()
    with open(cwd / "out.log", "w") as out, open(cwd / "err.log", "w") as err:
        child = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    errors = (cwd / "err.log").read_text() + (cwd / "out.log").read_text()
    if child.returncode:
        raise SystemExit(f"{' '.join(argv)} exited {child.returncode}:\n{errors[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, errors


def timed_floor(n: int, port: int, counter: object, standin_pid: int,
                folder: Path) -> tuple[float, float]:
    """The floor once in a fresh process, as ours runs: (its loop alone, the whole process
    from start to exit, as ours is timed)."""
    standin_before = cpu_seconds(standin_pid)
    wall, cpu, _, output = run([sys.executable, __file__, "--floor", str(n), str(port),
                                str(folder)], dict(os.environ), folder)
    seconds = float(output.strip().splitlines()[-1])
    with counter.get_lock():  # type: ignore[attr-defined]
        counter.value = 0  # type: ignore[attr-defined]
    print(f"floor (build + serialize + POST the same requests): {seconds:.2f} s, the whole "
          f"script {wall:.2f} s; CPU seconds: floor {cpu:.1f}, stand-in "
          f"{cpu_seconds(standin_pid) - standin_before:.1f}")
    return seconds, wall


def scheduled_slot(digest: list[str], env: dict[str, str],
                   folder: Path) -> tuple[float, float, float, str]:
    """One slot of `digest scheduler`: the scheduler is started and leads, then a schedule
    is added for the first whole minute at least 15 s away (the scheduler reads its
    schedules every 5 s). Return (the slot's duration, from its start to its end as the
    scheduler records them; the scheduler's CPU seconds and peak MB; its log)."""
    import sqlite3
    with open(folder / "scheduler.log", "w") as err:
        daemon = subprocess.Popen([*digest, "scheduler"], env=env, cwd=folder,
                                  stdout=subprocess.DEVNULL, stderr=err,
                                  stdin=subprocess.DEVNULL)
    try:
        time.sleep(2)
        slot = datetime.now(UTC).replace(second=0, microsecond=0)
        while (slot - datetime.now(UTC)).total_seconds() < 15:
            slot += timedelta(minutes=1)
        subprocess.run([*digest, "schedules", "add", "bench", "--list", "weekly", "--cron",
                        f"{slot.minute} {slot.hour} * * *", "--timezone", "UTC"], env=env,
                       cwd=folder, check=True, capture_output=True)
        db = sqlite3.connect(folder / "digest.db")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = db.execute("SELECT started_at, finished_at, status FROM schedule_runs"
                             ).fetchone()
            if row and row[1]:
                break
            time.sleep(0.5)
        else:
            raise SystemExit("the scheduled slot did not end within two minutes")
        db.close()
    finally:
        daemon.terminate()
        _, _, usage = os.wait4(daemon.pid, 0)
    if row[2] != "sent":
        raise SystemExit(f"the slot ended {row[2]}: {(folder / 'scheduler.log').read_text()}")
    took = (datetime.fromisoformat(row[1]) - datetime.fromisoformat(row[0])).total_seconds()
    return (took, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
            (folder / "scheduler.log").read_text())


# The libraries a `digest send` cannot do without (the database layer, the transport's
# client, the templates, the inliner, the feed fetcher, the command line), as it loads them:
# with the cycle collector paused.
STACK = ("sqlalchemy.orm", "sqlalchemy.dialects.sqlite", "sendgrid", "jinja2", "premailer",
         "httpx", "click", "rich.console")


def stack_imports(runs: int = 5) -> float:
    """Median wall time of a fresh interpreter that only imports :data:`STACK`: what any
    send on this stack pays before its first line of work."""
    code = "import gc; gc.disable(); import " + ", ".join(STACK)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def write_csv(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write("email,name\n")
        out.writelines(f"reader{i}@example{i % 97}.org,Reader {i}\n" for i in range(n))


def main() -> None:  # noqa: PLR0912, PLR0915 - the benchmark's steps, in the order they run
    if sys.argv[1:2] == ["--floor"]:
        n, port, folder = int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
        preview = json.loads((folder / "preview.json").read_text(encoding="utf-8"))
        print(floor(n, port, preview["subject"], preview["text"], preview["html"]))
        return
    # Imported here, not at the top: the floor runs this file too, and must load nothing
    # but the sendgrid client.
    from bytecode import compile_package
    compile_package()
    sys.path.insert(0, str(ROOT))
    from digest.edges.demo import SAMPLE_FEEDS, SampleServer
    after_preview = "--after-preview" in sys.argv
    scheduled = "--scheduled" in sys.argv
    repeat = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--repeat=")), 1)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if (repeat > 1 or scheduled) and args[1:2] not in ([], ["sqlite"]):
        raise SystemExit("--repeat and --scheduled need SQLite (its database is copied "
                         "between runs and read for the slot's times)")
    n = int(args[0]) if args else 100_000
    given_url = args[1] if len(args) > 1 and args[1] != "sqlite" else None
    jobs = args[2] if len(args) > 2 else "1"
    counter = multiprocessing.Value("q", 0)
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=standin, args=(ports, counter), daemon=True)
    server.start()
    port = ports.get(timeout=30)
    digest = [sys.executable, "-m", "digest"]
    with tempfile.TemporaryDirectory() as tmp, SampleServer(datetime.now(UTC)) as feeds:
        folder = Path(tmp)
        url = given_url or f"sqlite:///{folder}/digest.db"
        # Nothing of this machine's own DIGEST_* settings: defaults, as a new user has.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        env.update({"PYTHONPATH": str(ROOT), "DIGEST_DATABASE_URL": url,
                    "DIGEST_CACHE_DIR": str(folder / "cache"),
                    "DIGEST_TRANSPORT": "sendgrid", "SENDGRID_API_KEY": KEY,
                    "DIGEST_SENDGRID_HOST": f"http://127.0.0.1:{port}"})
        for name in SAMPLE_FEEDS:
            run([*digest, "feeds", "add", feeds.url(name)], env, folder)
        run([*digest, "lists", "create", "--list", "weekly", "--title", "The Weekly Recap"], env,
            folder)
        write_csv(folder / "people.csv", n)
        took, _, peak, _ = run([*digest, "subscribers", "import", "people.csv", "--list",
                                "weekly"], env, folder)
        print(f"imported {n:,} subscribers through the CLI in {took:.1f} s "
              f"({url.split(':')[0]}), peak {peak:.0f} MB")
        run([*digest, "collect"], env, folder)
        run([*digest, "preview", "--list", "weekly", "--no-collect", "--out", "p.html",
             "--text", "p.txt"], env, folder)
        html = (folder / "p.html").read_text(encoding="utf-8")
        subject = re.search(r"<title>(.*?)</title>", html, re.S)
        (folder / "preview.json").write_text(json.dumps({
            "subject": subject[1] if subject else "The Weekly Recap", "html": html,
            "text": (folder / "p.txt").read_text(encoding="utf-8")}), encoding="utf-8")
        print(f"the issue: {len(html.encode()):,} bytes of HTML")

        # Runs after the first start from the database as it was before the first send
        # (SQLite: a copy of its file), so each sends the same new issue to everyone.
        saved = folder / "before-send.db"
        if repeat > 1:
            shutil.copy(folder / "digest.db", saved)
        floors = [timed_floor(n, port, counter, server.pid, folder)]
        sends: list[float] = []
        command = [*digest, "send", "--list", "weekly", "--yes"]
        if jobs != "1":
            command += ["--jobs", jobs]
        if os.environ.get("BENCH_PROFILE"):  # collapsed stacks of every sending process
            command = ["py-spy", "record", "--subprocesses", "--format", "raw", "-o",
                       os.environ["BENCH_PROFILE"], "--", *command]
        for attempt in range(repeat):
            if attempt:
                shutil.copy(saved, folder / "digest.db")
            if not after_preview:  # this email, inlined by the preview or a send
                shutil.rmtree(folder / "cache" / "inlined", ignore_errors=True)
            machine_before, standin_before = cpu_seconds(), cpu_seconds(server.pid)
            if scheduled:
                ours, sender_cpu, peak, log = scheduled_slot(digest, env, folder)
            else:
                ours, sender_cpu, peak, log = run(command, env, folder)
            machine_cpu = cpu_seconds() - machine_before
            standin_cpu = cpu_seconds(server.pid) - standin_before
            accepted = counter.value
            if attempt == 0:
                print("\n".join("  " + line for line in log.strip().splitlines()[-8:]))
            print(("a scheduled slot (its start to its end)" if scheduled else "digest send")
                  + f" to {n:,}" + (f" with --jobs {jobs}" if jobs != "1" else "")
                  + (" after a preview" if after_preview else "")
                  + f": {ours:.2f} s, peak memory {peak:.0f} MB (goal ≤ 200 MB at "
                  f"1,000,000); stand-in counted {accepted:,}")
            print(f"CPU seconds during the send: senders {sender_cpu:.1f}, stand-in "
                  f"{standin_cpu:.1f}, the rest of the machine (the database server, …) "
                  f"{machine_cpu - sender_cpu - standin_cpu:.1f}; "
                  f"{os.cpu_count()} cores × {ours:.1f} s = {(os.cpu_count() or 1) * ours:.1f}")
            if accepted != n:
                raise SystemExit(f"the stand-in counted {accepted:,} recipients, not {n:,}")
            with counter.get_lock():
                counter.value = 0
            sends.append(ours)
            floors.append(timed_floor(n, port, counter, server.pid, folder))
    goal = 2.0 if n < 100_000 else 1.5
    ours = statistics.median(sends)
    loop = statistics.median(f[0] for f in floors)
    script = statistics.median(f[1] for f in floors)
    runs = f"median of {repeat} " if repeat > 1 else ""
    print(f"ours ({runs}{', '.join(f'{t:.2f}' for t in sends)}) {ours:.2f} s ÷ "
          f"{'median' if repeat > 1 else 'mean'} floor {loop:.2f} s (its loop alone) = "
          f"{ours / loop:.2f}; ÷ floor script {script:.2f} s (start to exit, as ours) = "
          f"{ours / script:.2f} (goal ≤ {goal})")
    if n < 100_000:
        stack = stack_imports()
        print(f"the stack's imports alone ({', '.join(STACK)}; a fresh interpreter, median "
              f"of 5): {stack:.2f} s = {stack / script:.2f} × the floor script")
    server.terminate()


if __name__ == "__main__":
    main()
