"""A SendGrid v3 Mail Send stand-in on loopback: checks, counts, and misbehaves on purpose.

Every request body is validated against SendGrid's published OpenAPI schema
(tests/reference/sendgrid/tsg_mail_v3.json, a copy of the one in ../shared; its one
known error, top-level custom_args typed as a string, is patched) and against the
documented limits. Accepted recipients are counted, so a test can prove who got the
issue and how often.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema

SPEC = Path(__file__).resolve().parent / "reference" / "sendgrid" / "tsg_mail_v3.json"
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_BODY = 30 * 1024 * 1024


@cache
def mail_send_validator() -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator for POST /v3/mail/send bodies."""
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    schema = copy.deepcopy(
        spec["components"]["requestBodies"]["PostMailSend"]["content"]["application/json"]
        ["schema"])
    schema["components"] = spec["components"]
    # Known error in the published spec: the API takes an object of string values.
    schema["properties"]["custom_args"] = {"type": "object",
                                           "additionalProperties": {"type": "string"}}
    validator_class = jsonschema.validators.validator_for(
        {"$schema": "https://json-schema.org/draft/2020-12/schema"})
    return validator_class(schema)  # type: ignore[no-any-return]


def schema_errors(body: Any) -> list[str]:
    """What is wrong with a Mail Send body by the published schema and documented limits."""
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
              for e in mail_send_validator().iter_errors(body)]
    if isinstance(body, dict):
        people = body.get("personalizations", [])
        if len(people) > MAX_PERSONALIZATIONS:
            errors.append(f"personalizations: more than {MAX_PERSONALIZATIONS}")
        total = sum(len(p.get(k, [])) for p in people for k in ("to", "cc", "bcc"))
        if total > MAX_RECIPIENTS:
            errors.append(f"personalizations: more than {MAX_RECIPIENTS} recipients")
        content = body.get("content", [])
        if content and content[0].get("type") != "text/plain" and any(
                c.get("type") == "text/plain" for c in content):
            errors.append("content: text/plain must come first")
        for where, args in [("custom_args", body.get("custom_args", {}))] + [
                (f"personalizations/{i}/custom_args", p.get("custom_args", {}))
                for i, p in enumerate(people)]:
            if any(not isinstance(v, str) for v in (args or {}).values()):
                errors.append(f"{where}: values must be strings")
    return errors


class SendGridStandIn:
    """Serve /v3/mail/send on 127.0.0.1:0.

    ``faults`` is a list of fault names consumed one per request (None: behave);
    ``fault_rates`` draws faults at random (seeded) once ``faults`` is empty. Faults:
    "429", "500", "503", "slow" (answer after ``slow_seconds``), "drop_after_accept"
    (count the recipients, then close without answering), "drop_before" (close before
    reading the body), "401".
    """

    def __init__(self, api_key: str = "SG.test-key", *, validate: bool = True,
                 seed: int = 0) -> None:
        self.api_key = api_key
        self.validate = validate
        self.faults: list[str | None] = []
        self.fault_rates: dict[str, float] = {}
        self.random = random.Random(seed)
        self.slow_seconds = 2.0
        self.delay = 0.0
        self.accepted: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.keep_bodies = True
        self.requests = 0
        # Requests whose answer the client cannot have yet, and the most there ever were:
        # a request counts from its arrival until its answer is decided, before the
        # answer's first byte is written, so a client that waits for each answer before
        # its next request is never seen with two, however late this thread runs.
        self.in_flight = 0
        self.most_in_flight = 0
        self.rejections: list[tuple[int, list[str]]] = []
        self.on_request: Callable[[], None] | None = None
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next_fault(self) -> str | None:
        with self.lock:
            if self.faults:
                return self.faults.pop(0)
            roll = self.random.random()
            for name, rate in self.fault_rates.items():
                if roll < rate:
                    return name
                roll -= rate
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            flying = False  # this request counts in the stand-in's in_flight

            def answer(self, status: int, payload: dict[str, Any] | None = None,
                       headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode() if payload is not None else b""
                self.land()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def errors(self, status: int, messages: list[str],
                       headers: dict[str, str] | None = None) -> None:
                with standin.lock:
                    standin.rejections.append((status, messages))
                self.answer(status, {"errors": [{"message": m, "field": None, "help": None}
                                                for m in messages]}, headers)

            def do_POST(self) -> None:
                with standin.lock:
                    standin.requests += 1
                    standin.in_flight += 1
                    standin.most_in_flight = max(standin.most_in_flight, standin.in_flight)
                self.flying = True
                try:
                    self.answer_post()
                finally:
                    self.land()  # when answering failed before a reply was decided

            def land(self) -> None:
                """Count this request out of flight, once: its answer is decided and
                nothing of it has reached the client yet."""
                with standin.lock:
                    if self.flying:
                        self.flying = False
                        standin.in_flight -= 1

            def hang_up(self) -> None:
                """Close the connection without an answer, which the client learns at
                once: the request leaves flight first."""
                self.land()
                self.close_connection = True
                self.connection.shutdown(2)

            def answer_post(self) -> None:  # noqa: PLR0912 - SendGrid's checks in its order, and each fault a test can ask for
                if standin.on_request is not None:
                    standin.on_request()
                fault = standin._next_fault()
                if fault == "drop_before":
                    self.hang_up()
                    return
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if self.path != "/v3/mail/send":
                    self.errors(404, [f"no route {self.path}"])
                    return
                if self.headers.get("Authorization") != f"Bearer {standin.api_key}" \
                        or fault == "401":
                    self.errors(401, ["The provided authorization grant is invalid, "
                                      "expired, or revoked"])
                    return
                if length > MAX_BODY:
                    self.errors(413, ["request body too large"])
                    return
                if fault == "429":
                    self.errors(429, ["too many requests"],
                                {"X-RateLimit-Reset": f"{time.time() + 0.2:.3f}",
                                 "X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0"})
                    return
                if fault == "400":
                    self.errors(400, ["The from address does not match a verified Sender "
                                      "Identity."])
                    return
                if fault in ("500", "503"):
                    self.errors(int(fault), ["internal error"])
                    return
                media = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if media != "application/json":  # SendGrid's answer, word for word
                    self.errors(415, ["Content-Type should be application/json."])
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self.errors(400, ["body is not JSON"])
                    return
                if standin.validate:
                    problems = schema_errors(body)
                    if problems:
                        self.errors(400, problems)
                        return
                if fault == "slow":
                    time.sleep(standin.slow_seconds)
                if standin.delay:
                    time.sleep(standin.delay)
                sandbox = body.get("mail_settings", {}).get("sandbox_mode", {}).get("enable")
                if not sandbox:
                    with standin.lock:
                        for p in body.get("personalizations", []):
                            for to in p.get("to", []):
                                standin.accepted[to["email"]] += 1
                        if standin.keep_bodies:
                            standin.bodies.append(body)
                if fault == "drop_after_accept":
                    self.hang_up()
                    return
                if sandbox:
                    self.answer(200, None, {"X-Message-Id": "sandbox"})
                else:
                    self.answer(202, None, {"X-Message-Id": uuid.uuid4().hex[:22]})

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
