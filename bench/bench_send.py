"""Send one issue to N subscribers through the SendGrid transport to a loopback stand-in.

Goal (issue 3): 1,000,000 subscribers in ≤ 60 s, peak memory ≤ 300 MB, on SQLite and
PostgreSQL; and our time ÷ a floor script that only builds, serializes and POSTs the
same request bodies ≤ 1.5.

Run: .venv/bin/python bench/bench_send.py [N] [DATABASE_URL] [JOBS]
The send itself runs as `python -m digest send` in a child process, so its peak memory
(ru_maxrss) is the send's alone.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402

from digest.context import Context  # noqa: E402
from digest.models import Entry  # noqa: E402
from digest.settings import load_settings  # noqa: E402
from subscribers.lists import create_list  # noqa: E402
from subscribers.models import Subscriber, Subscription  # noqa: E402

KEY = "SG.bench"


def standin(port_queue: multiprocessing.Queue, counter: object) -> None:  # type: ignore[type-arg]
    """A SendGrid stand-in that answers 202 at once and counts recipients."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            # Counting "to" objects without a full parse keeps the stand-in cheap.
            with counter.get_lock():  # type: ignore[attr-defined]
                counter.value += body.count(b'"to": [')  # type: ignore[attr-defined]
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


def populate(url: str, n: int) -> None:
    settings = load_settings(env={}).settings.replace(database_url=url)
    ctx = Context.open(settings)
    mailing_list = create_list(ctx.db, "bench", "The Bench Recap")
    now = datetime.now(UTC)
    with ctx.db.session() as s:
        s.execute(insert(Entry), [{"title": f"Recap {i}: Iran Moves in Syria", "link":
                                   f"https://news.example/{i}", "summary_html": "<p>x</p>",
                                   "keywords": ["Iran"], "first_seen_at": now,
                                   "dated_at": now, "updated_at": now} for i in range(20)])
    chunk = 50_000
    for start in range(0, n, chunk):
        with ctx.db.session() as s:
            s.execute(insert(Subscriber), [
                {"id": i + 1, "email": f"reader{i}@example.org",
                 "email_key": f"reader{i}@example.org", "name": f"Reader {i}"}
                for i in range(start, min(n, start + chunk))])
            s.execute(insert(Subscription), [
                {"subscriber_id": i + 1, "list_id": mailing_list.id, "status": "active",
                 "source": "bench", "keywords": []}
                for i in range(start, min(n, start + chunk))])
    if ctx.db.is_postgres:
        with ctx.db.engine.connect() as c:
            c.execute(text("ANALYZE"))
            c.commit()
    ctx.close()


def floor(n: int, port: int) -> float:
    """Build, serialize and POST bodies of the same shape, with the same client."""
    from sendgrid import SendGridAPIClient
    client = SendGridAPIClient(KEY, host=f"http://127.0.0.1:{port}")
    html = "<html>" + "x" * 20_000 + "</html>"
    started = time.perf_counter()
    for start in range(0, n, 1000):
        people = []
        for i in range(start, min(n, start + 1000)):
            url = f"https://digest.example/u/{i}.{'s' * 27}"
            people.append({"to": [{"email": f"reader{i}@example.org", "name": f"Reader {i}"}],
                           "substitutions": {"__DIGEST_UNSUBSCRIBE_URL__": url,
                                             "__DIGEST_UNSUBSCRIBE_URL_TEXT__": url,
                                             "__DIGEST_PREFERENCES_URL__": url,
                                             "__DIGEST_PREFERENCES_URL_TEXT__": url,
                                             "__DIGEST_NAME__": f"Reader {i}",
                                             "__DIGEST_NAME_TEXT__": f"Reader {i}"},
                           "headers": {"List-Unsubscribe": f"<{url}>",
                                       "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
                           "custom_args": {"delivery_id": str(i), "subscriber_id": str(i)}})
        body = {"personalizations": people, "from": {"email": "d@example.org"},
                "subject": "s", "content": [{"type": "text/plain", "value": html},
                                            {"type": "text/html", "value": html}]}
        json.dumps(body)  # the client serializes again; count one serialization as ours
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


def timed_floor(n: int, port: int, counter: object, standin_pid: int) -> float:
    """Run the floor once in a fresh process, as ours runs, and print its wall and CPU
    time (the process's start-up is left out, which favours the floor)."""
    standin_before = cpu_seconds(standin_pid)
    started = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, __file__, "--floor", str(n), str(port)],
                          capture_output=True, text=True, check=True)
    seconds = float(done.stdout.strip())
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    with counter.get_lock():  # type: ignore[attr-defined]
        counter.value = 0  # type: ignore[attr-defined]
    print(f"floor (build + serialize + POST the same shape): {seconds:.1f} s; CPU seconds: "
          f"floor {used.ru_utime + used.ru_stime - started.ru_utime - started.ru_stime:.1f}"
          f", stand-in {cpu_seconds(standin_pid) - standin_before:.1f}")
    return seconds


def main() -> None:
    if sys.argv[1:2] == ["--floor"]:
        print(floor(int(sys.argv[2]), int(sys.argv[3])))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    given_url = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "sqlite" else None
    jobs = sys.argv[3] if len(sys.argv) > 3 else "2"
    counter = multiprocessing.Value("q", 0)
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=standin, args=(ports, counter), daemon=True)
    server.start()
    port = ports.get(timeout=30)
    with tempfile.TemporaryDirectory() as tmp:
        url = given_url or f"sqlite:///{tmp}/bench.db"
        t = time.perf_counter()
        populate(url, n)
        kind = url.split(":")[0]
        print(f"populated {n:,} subscribers in {time.perf_counter() - t:.1f} s ({kind})")
        env = {**os.environ, "DIGEST_DATABASE_URL": url, "DIGEST_TRANSPORT": "sendgrid",
               "DIGEST_SENDGRID_HOST": f"http://127.0.0.1:{port}", "SENDGRID_API_KEY": KEY,
               "DIGEST_BATCH_SIZE": "1000", "DIGEST_SECRET_KEY": "bench",
               "DIGEST_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING")}
        # The floor runs just before and just after ours, and the ratio uses their mean:
        # this machine's speed drifts by ±15 % over minutes.
        floors = [timed_floor(n, port, counter, server.pid)]
        machine_before, standin_before = cpu_seconds(), cpu_seconds(server.pid)
        senders_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        command = [sys.executable, "-m", "digest", "send", "--list", "bench", "--no-collect",
                   "--yes", "--jobs", jobs]
        if os.environ.get("BENCH_PROFILE"):  # collapsed stacks of every sending process
            command = ["py-spy", "record", "--subprocesses", "--format", "raw", "-o",
                       os.environ["BENCH_PROFILE"], "--", *command]
        done = subprocess.run(command, env=env, cwd=ROOT,
                              capture_output=True, text=True)
        ours = time.perf_counter() - t
        senders = resource.getrusage(resource.RUSAGE_CHILDREN)
        sender_cpu = (senders.ru_utime + senders.ru_stime - senders_before.ru_utime
                      - senders_before.ru_stime)
        machine_cpu = cpu_seconds() - machine_before
        standin_cpu = cpu_seconds(server.pid) - standin_before
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(done.stdout[-300:], done.stderr[-400:])
        accepted = counter.value
        print(f"send to {n:,} with --jobs {jobs}: {ours:.1f} s (goal ≤ 60 s for 1,000,000), "
              f"peak memory of one sending process {peak_mb:.0f} MB (goal ≤ 300 MB); "
              f"stand-in counted {accepted:,}")
        print(f"CPU seconds during the send: senders {sender_cpu:.1f}, stand-in "
              f"{standin_cpu:.1f}, the rest of the machine (the database server, …) "
              f"{machine_cpu - sender_cpu - standin_cpu:.1f}; "
              f"{os.cpu_count()} cores × {ours:.1f} s = {(os.cpu_count() or 1) * ours:.1f}")
    floors.append(timed_floor(n, port, counter, server.pid))
    mean = sum(floors) / len(floors)
    print(f"ours {ours:.1f} s ÷ mean floor {mean:.1f} s = {ours / mean:.2f} (goal ≤ 1.5)")
    server.terminate()


if __name__ == "__main__":
    main()
