"""`digest serve` as a real process: pages answer over HTTP, and SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import select

from digest.services.storage.context import Context
from digest.services.storage.subscriber_models import Subscription
from subscribers.lists import create_list
from subscribers.subscriptions import add_subscriber
from tests.conftest import free_port, make_settings

ROOT = Path(__file__).resolve().parent.parent


def test_serve_answers_one_click_and_scanner_requests_and_stops_on_sigterm(
        tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    ctx = Context.open(make_settings(tmp_path, sqlite_url,
                                     base_url=f"http://127.0.0.1:{port}"))
    create_list(ctx.db, "weekly", "The Weekly Recap")
    sub_id = add_subscriber(ctx.db, "weekly", "reader@example.org").subscription_id
    assert sub_id is not None
    token = ctx.tokens.make("unsubscribe", sub_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update({"DIGEST_DATABASE_URL": sqlite_url, "DIGEST_SECRET_KEY": "test-secret",
                "DIGEST_BASE_URL": f"http://127.0.0.1:{port}"})
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "digest", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        # Scanners GET (and HEAD) the link: nothing changes.
        assert httpx.get(f"{base}/u/{token}").status_code == 200
        assert httpx.head(f"{base}/u/{token}").status_code == 200
        with ctx.db.session() as s:
            assert s.scalar(select(Subscription.status)) == "active"
        # A mail client's one-click POST: 200, no redirect.
        answer = httpx.post(f"{base}/u/{token}", content=b"List-Unsubscribe=One-Click",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert answer.status_code == 200
        with ctx.db.session() as s:
            assert s.scalar(select(Subscription.status)) == "unsubscribed"
        assert httpx.post(f"{base}/u/{token}x", content=b"List-Unsubscribe=One-Click",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}
                          ).status_code == 400
        page = httpx.get(f"{base}/subscribe")
        assert "Content-Security-Policy" in page.headers
        assert page.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    # uvicorn shuts down cleanly, then re-raises SIGTERM so the exit status tells why.
    assert code in (0, -signal.SIGTERM), log.read_text()
    assert "scheduler stopped" in log.read_text()
    assert "Traceback" not in log.read_text()
    ctx.close()
