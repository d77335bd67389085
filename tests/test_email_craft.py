"""The email's craft: spam score, contrast, client-safe CSS, accessibility (axe-core in
Chromium), dark mode, the plain-text part, the recap's parts and the link check."""

from __future__ import annotations

import base64
import email
import email.policy
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest
from rich.console import Console

from digest.edges.demo import PICTURES, run_demo, sample_png
from digest.services.feeds.collect import add_feed, collect
from digest.services.pipeline import RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.transports.locmem import LocmemTransport
from digest.settings import Settings
from subscribers.lists import create_list, edit_list
from subscribers.subscriptions import add_subscriber
from tests.conftest import ARTIFACTS, LiveServer, free_port, make_settings
from tests.feedserver import FeedServer, Route, rss
from tests.test_send import recap

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / ".cache" / "node" / "node_modules" / "axe-core" / "axe.min.js"
ALLOWLIST = json.loads((ROOT / "tests" / "reference" / "css-allowlist.json")
                       .read_text(encoding="utf-8"))
ARABIC = ["ملخص: الليرة السورية تسجل مستوى قياسياً جديداً",
          "ملخص: إيران تتقدم في سوريا بينما روسيا منشغلة في أوكرانيا",
          "ملخص: لبنان يؤجل إعادة الإعمار قبل الشتاء"]


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def html_of(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]


def text_of(message: EmailMessage) -> str:
    text: str = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    return text.replace("\r\n", "\n")


def sent(ctx: Context, list_name: str = "weekly") -> list[bytes]:
    result = run_list(ctx, RunRequest(list_name, collect_first=False))
    assert result.send is not None and result.send.ok
    return [p.read_bytes() for p in sorted(Path(ctx.settings.outbox_dir).rglob("*.eml"))]


# The feed server is on loopback: image sizing and the link check may reach it only so.
LOOPBACK = ["127.0.0.1/32"]


def desk(tmp_path: Path, feed_server: FeedServer, items: list[dict[str, object]], *,  # noqa: PLR0913 - fixtures, then what each test changes about the list
         language: str = "en", keywords: list[str] | None = None,
         name: str = "weekly", **changes: object) -> Context:
    """A list with one reader and one feed of ``items``, collected."""
    folder = tmp_path / name
    folder.mkdir()
    ctx = Context.open(make_settings(folder, f"sqlite:///{folder}/d.db",
                                     outbox_dir=str(folder / "outbox"),
                                     keyword_order=["Syria", "Iran"], **changes))
    add_feed(ctx.db, feed_server.add(f"/{name}.xml", body=rss(items)), "Desk")
    collect(ctx.db, ctx.settings)
    create_list(ctx.db, "weekly", "The Weekly Recap")
    edit_list(ctx.db, "weekly", language=language)
    add_subscriber(ctx.db, "weekly", "reader@example.org", name="Reader",
                   keywords=keywords or [])
    return ctx


@pytest.fixture(scope="module")
def issues(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EmailMessage]]:
    """The four issues every check runs on: the demo's, 50 entries, Arabic only, and a
    reader's one-section keyword segment."""
    tmp = tmp_path_factory.mktemp("issues")
    server = FeedServer()
    found: dict[str, EmailMessage] = {}
    run_demo(tmp / "demo", console=Console(file=io.StringIO()))
    found["demo"] = parse(sorted((tmp / "demo" / "outbox").rglob("*.eml"))[0].read_bytes())
    tags = [["Iran"], ["Syria"], ["Ukraine"], ["Iraq", "Economy"], []]
    many = [recap(n, days_ago=n / 10, tags=tags[n % 5]) for n in range(1, 51)]
    ctx = desk(tmp, server, many, name="fifty")
    found["fifty"] = parse(sent(ctx)[0])
    ctx.close()
    arabic = [{"title": t, "guid": f"ar{i}", "link": f"https://news.example/ar/{i}",
               "tags": ["سوريا"], "date": recap(1)["date"],
               "summary": "<p>فقدت الليرة عُشر قيمتها هذا الأسبوع. وارتفعت أسعار الخبز.</p>"}
              for i, t in enumerate(ARABIC)]
    ctx = desk(tmp, server, arabic, language="ar", name="arabic")
    found["arabic"] = parse(sent(ctx)[0])
    ctx.close()
    ctx = desk(tmp, server, many[:12], keywords=["Iran"], name="segment")
    found["segment"] = parse(sent(ctx)[0])
    ctx.close()
    server.close()
    yield found


# --- spam ----------------------------------------------------------------------------------

BANNED = re.compile(r"^(HTML_FONT_LOW_CONTRAST|HTML_IMAGE_ONLY_\w+|MIME_HTML_ONLY|URI_\w+)$")


def spam_report(message: EmailMessage) -> tuple[float, list[str]]:
    done = subprocess.run(["spamassassin", "-L", "-t"], input=message.as_bytes(),
                          capture_output=True, timeout=120)
    report = done.stdout.decode("utf-8", "replace")
    score = re.search(r"Content analysis details:\s+\((-?[\d.]+) points", report)
    assert score, report[-2000:]
    details = report[score.end():]
    rules = re.findall(r"^\s*-?\d+\.\d+\s+([A-Z][A-Z0-9_]+)\s", details, re.MULTILINE)
    return float(score[1]), rules


@pytest.mark.parametrize("case", ["demo", "fifty", "arabic", "segment"])
def test_spamassassin_scores_each_issue_clean(issues: dict[str, EmailMessage],
                                              case: str) -> None:
    if not shutil.which("spamassassin"):
        pytest.skip("spam tests skipped: no spamassassin; install Debian's with "
                    "`apt-get install spamassassin` (.ci/run does)")
    score, rules = spam_report(issues[case])
    assert score < 0.5, (score, rules)
    assert not [r for r in rules if BANNED.match(r)], rules


def test_the_four_issues_are_what_they_say(issues: dict[str, EmailMessage]) -> None:
    assert html_of(issues["fifty"]).count('class="entry"') == 50
    arabic = html_of(issues["arabic"])
    assert '<html lang="ar"' in arabic and all(t in arabic for t in ARABIC)
    segment = html_of(issues["segment"])
    assert segment.count("<h2") == 1 and ">Iran</h2>" in segment


# --- contrast, from the inlined CSS ---------------------------------------------------------

def _rgb(value: str) -> tuple[float, float, float] | None:
    found = re.search(r"#([0-9a-fA-F]{6}|[0-9a-fA-F]{3})\b", value)
    if not found:
        return None
    digits = found[1] if len(found[1]) == 6 else "".join(c * 2 for c in found[1])
    return tuple(int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def luminance(rgb: tuple[float, float, float]) -> float:
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


class ContrastCheck(HTMLParser):
    """Every text's colour against the background it sits on, from inline styles and
    bgcolor attributes (what an email client sees after inlining)."""

    VOID: ClassVar[set[str]] = {"br", "img", "meta", "link", "hr", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[dict[str, object]] = [{"fg": (0.0, 0.0, 0.0), "bg": (1.0, 1.0, 1.0),
                                                "size": 16.0, "bold": False, "hidden": False}]
        self.pairs: list[tuple[str, float, bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        top = dict(self.stack[-1])
        values = dict(attrs)
        style = {k.strip().lower(): v.strip() for k, _, v in
                 (d.partition(":") for d in (values.get("style") or "").split(";")) if v}
        if tag in ("head", "style", "title", "script"):
            top["hidden"] = True
        if values.get("bgcolor"):
            top["bg"] = _rgb(values["bgcolor"] or "") or top["bg"]
        for key in ("background", "background-color"):
            if key in style and _rgb(style[key]):
                top["bg"] = _rgb(style[key])
        if "color" in style and _rgb(style["color"]):
            top["fg"] = _rgb(style["color"])
        font = style.get("font", "") + " " + style.get("font-size", "")
        size = re.search(r"(\d+(?:\.\d+)?)px", font)
        if size:
            top["size"] = float(size[1])
        if "bold" in style.get("font", "") or style.get("font-weight") in ("bold", "700"):
            top["bold"] = True
        if tag in ("h1", "h2", "h3", "strong", "b"):
            top["bold"] = True
        if style.get("display") == "none":
            top["hidden"] = True
        if tag not in self.VOID:
            self.stack.append(top)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and len(self.stack) > 1:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        top = self.stack[-1]
        if data.strip() and not top["hidden"]:
            size, bold = float(top["size"]), bool(top["bold"])  # type: ignore[arg-type]
            large = size >= 24 or (bold and size >= 18.66)
            self.pairs.append((data.strip()[:40], contrast(top["fg"], top["bg"]),  # type: ignore[arg-type]
                               large))


@pytest.mark.parametrize("case", ["demo", "fifty", "arabic", "segment"])
def test_every_text_colour_has_the_contrast_wcag_asks(issues: dict[str, EmailMessage],
                                                       case: str) -> None:
    check = ContrastCheck()
    check.feed(html_of(issues[case]))
    assert len(check.pairs) > 20
    low = [(text, round(ratio, 2)) for text, ratio, large in check.pairs
           if ratio < (3.0 if large else 4.5)]
    assert not low, low


# --- client-safe CSS -----------------------------------------------------------------------

def css_in(html: str) -> tuple[set[str], set[str], set[str]]:
    """(properties in style attributes, properties in style blocks, at-rules)."""
    inline = {d.partition(":")[0].strip().lower()
              for style in re.findall(r'style="([^"]*)"', html) for d in style.split(";")
              if ":" in d}
    blocks = " ".join(re.findall(r"<style[^>]*>(.*?)</style>", html, re.DOTALL))
    blocks = re.sub(r"/\*.*?\*/", "", blocks, flags=re.DOTALL)
    in_blocks = {m.lower() for m in re.findall(r"([a-z-]+)\s*:\s*[^;{}]+(?:;|})", blocks)
                 if not re.match(r"(max-width|prefers-color-scheme)$", m)}
    at_rules = set()
    for rule in re.findall(r"@[a-z-]+[^{]*", blocks):
        at_rules.add("@media (prefers-color-scheme)" if "prefers-color-scheme" in rule
                     else rule.split()[0])
    return inline, in_blocks, at_rules


@pytest.mark.parametrize("case", ["demo", "fifty", "arabic", "segment"])
def test_the_css_stays_inside_the_caniemail_allow_list(issues: dict[str, EmailMessage],
                                                        case: str) -> None:
    html = html_of(issues[case])
    inline, in_blocks, at_rules = css_in(html)
    allowed = ALLOWLIST["properties"]
    untracked = set(ALLOWLIST["untracked"])
    bad_inline = {p for p in inline - untracked
                  if p not in allowed or "inline" not in allowed[p]["uses"]}
    bad_blocks = {p for p in in_blocks - untracked
                  if p not in allowed or "enhancement" not in allowed[p]["uses"]}
    assert not bad_inline, f"inline CSS outside tests/reference/css-allowlist.json: {bad_inline}"
    assert not bad_blocks, f"block CSS outside the allow-list: {bad_blocks}"
    assert at_rules <= set(ALLOWLIST["at_rules"]), at_rules
    # Outlook for Windows: the container's max-width has a table of fixed width around it.
    assert "<!--[if mso]><table role=\"presentation\" width=\"600\"" in html
    assert "border-radius" not in html  # nothing rounded that Outlook would square


def test_dark_mode_markup(issues: dict[str, EmailMessage]) -> None:
    html = html_of(issues["demo"])
    assert '<meta name="color-scheme" content="light dark">' in html
    assert '<meta name="supported-color-schemes" content="light dark">' in html
    dark = html[html.index("@media (prefers-color-scheme: dark)"):]
    assert "!important" in dark.split("}")[0] + dark.split("}")[1]
    assert "[data-ogsc] .entry" in html and "[data-ogsb] .container" in html


# --- headings, images, links ---------------------------------------------------------------

def test_structure_headings_images_and_link_text(issues: dict[str, EmailMessage]) -> None:
    for case, message in issues.items():
        html = html_of(message)
        assert html.count("<h1") == 1, case
        assert html.count("<h2") == html.count('class="section"') >= 1, case
        assert html.count("<h3") == html.count('class="entry"'), case
        for table in re.findall(r"<table\b[^>]*>", html):
            assert 'role="presentation"' in table, (case, table)
        for image in re.findall(r"<img\b[^>]*>", html):
            assert re.search(r'\balt="[^"]*"', image) and 'width="' in image \
                and 'height="' in image, (case, image)
        for text in re.findall(r"<a\b[^>]*>(.*?)</a>", html, re.DOTALL):
            assert text.strip().lower() not in {"click here", "here", "read more", "more"}, case


# --- plain text ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["demo", "fifty", "arabic", "segment"])
def test_plain_text_lines_fit_and_links_are_numbered(issues: dict[str, EmailMessage],
                                                      case: str) -> None:
    text = text_of(issues[case])
    for line in text.splitlines():
        if "http" not in line:
            assert len(line) <= 78, line
        else:  # a line that overflows does so only by its URL
            assert len(re.sub(r"https?://\S+", "", line)) <= 78, line
    assert re.search(r"^\S.*\n-{3,}$", text, re.MULTILINE), "section headings underlined"
    assert re.search(r"^  \[1\] https?://", text, re.MULTILINE)
    if case == "arabic":
        assert ARABIC[0] in text  # written as is, in logical (right-to-left) order


# --- axe-core and dark mode in Chromium ----------------------------------------------------

def axe_violations(page: object) -> list[str]:
    if not AXE.exists():
        pytest.skip(f"accessibility tests skipped: no axe-core at {AXE}; `make test` "
                    "installs it with npm")
    page.add_script_tag(path=str(AXE))  # type: ignore[attr-defined]
    result = page.evaluate(  # type: ignore[attr-defined]
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']}})")
    return [f"{v['id']}: {v['help']} ({len(v['nodes'])}: "
            f"{v['nodes'][0]['html'][:120]})" for v in result["violations"]]


@pytest.mark.parametrize("case", ["demo", "arabic"])
def test_axe_finds_nothing_in_the_email_light_or_dark(issues: dict[str, EmailMessage],
                                                       case: str, browser: object,
                                                       tmp_path: Path) -> None:
    # The demo's pictures are served by `digest serve`, not running here: the same pictures
    # inline, so that the screenshots show the email as a reader sees it.
    html = re.sub(r'src="http://127\.0\.0\.1:8000/static/demo/([a-z-]+\.png)"',
                  lambda m: 'src="data:image/png;base64,' + base64.b64encode(
                      (PICTURES / m[1]).read_bytes()).decode() + '"',
                  html_of(issues[case]))
    page_file = tmp_path / "mail.html"
    page_file.write_text(html, encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    for scheme in ("light", "dark"):
        for width in (600, 375):
            page = browser.new_page(viewport={"width": width, "height": 1000},  # type: ignore[attr-defined]
                                    color_scheme=scheme)
            page.goto(page_file.as_uri())
            background = page.evaluate(
                "getComputedStyle(document.querySelector('.container')).backgroundColor")
            assert background == ("rgb(30, 30, 30)" if scheme == "dark"
                                  else "rgb(255, 255, 255)"), (scheme, background)
            assert axe_violations(page) == [], (case, scheme, width)
            page.screenshot(path=str(ARTIFACTS / f"email-{case}-{scheme}-{width}px.png"))
            page.close()


def test_axe_finds_nothing_on_the_public_pages(tmp_path: Path, feed_server: FeedServer,
                                               browser: object) -> None:
    ctx = desk(tmp_path, feed_server, [recap(1, tags=["Iran", "Syria"]), recap(2)])
    sent(ctx)
    sub_id = add_subscriber(ctx.db, "weekly", "second@example.org").subscription_id
    assert sub_id is not None
    tokens = ctx.tokens
    server = LiveServer(ctx, free_port())
    try:
        pages = ["/subscribe", "/archive", "/archive/weekly", "/archive/weekly/1",
                 "/archive/weekly/k/iran", "/login", "/nothing-here",
                 f"/u/{tokens.make('unsubscribe', sub_id)}",
                 f"/p/{tokens.make('preferences', sub_id)}",
                 f"/confirm/{tokens.make('confirm', sub_id)}"]
        for path in pages:
            for scheme in ("light", "dark"):
                # The pages' CSP (script-src 'self') would refuse axe's injected script.
                context = browser.new_context(  # type: ignore[attr-defined]
                    color_scheme=scheme, bypass_csp=True)
                page = context.new_page()
                page.goto(server.url + path)
                assert axe_violations(page) == [], (path, scheme)
                context.close()
    finally:
        server.close()
        ctx.close()


# --- the recap's parts, end to end ---------------------------------------------------------

def test_images_read_also_keywords_and_the_keyword_page(tmp_path: Path,
                                                         feed_server: FeedServer) -> None:
    feed_server.add("/img/map.png", Route(body=sample_png(640, 360, "map"),
                                          content_type="image/png"))
    feed_server.add("/img/logo.png", Route(body=sample_png(1200, 200, "logo"),
                                           content_type="image/png"))
    item = recap(1, tags=["Iran", "Syria"])
    item["summary"] = (f'<p>Standfirst one. Standfirst two.</p><img src="{feed_server.base}'
                       '/img/map.png" alt="A map of the front"><p>Read also: <a href='
                       '"https://news.example/r/9">Recap 9: Earlier</a></p>')
    ctx = desk(tmp_path, feed_server, [item, recap(2, tags=["Iran"])],
               fetch_allow_private=LOOPBACK)
    env = {"DIGEST_DATABASE_URL": ctx.settings.database_url, "PATH": "/usr/bin:/bin",
           "DIGEST_FETCH_ALLOW_PRIVATE": ",".join(LOOPBACK)}
    edit = subprocess.run([sys.executable, "-m", "digest", "lists", "edit", "--list", "weekly",
                           "--logo", f"{feed_server.base}/img/logo.png", "--logo-alt",
                           "The Weekly Recap", "--lead-length", "60"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert edit.returncode == 0, edit.stderr
    assert "(1200×200" in edit.stdout  # the size was read from the image
    message = parse(sent(ctx)[0])
    html, text = html_of(message), text_of(message)
    assert f'src="{feed_server.base}/img/map.png" alt="A map of the front" width="536" ' \
           'height="302"' in html  # the size was learnt from the image's first bytes
    assert 'alt="The Weekly Recap" width="536" height="89"' in html
    assert "Standfirst one. Standfirst two." in html
    assert '<a href="https://news.example/r/9"' in html and "Recap 9: Earlier" in text
    assert 'href="https://digest.example/archive/weekly/k/syria"' in html
    from starlette.testclient import TestClient

    from digest.edges.web.app import create_app
    page = TestClient(create_app(ctx)).get("/archive/weekly/k/syria")
    assert page.status_code == 200 and "Recap 1: Iran Moves in Syria" in page.text
    assert "Recap 2" not in page.text
    ctx.close()


# --- link check ----------------------------------------------------------------------------

def test_preview_check_links_finds_the_broken_and_the_redirecting(
        tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.add("/ok", Route(body=b"fine", content_type="text/html"))
    feed_server.add("/gone", Route(status=404))
    feed_server.add("/moved", Route(redirect_to="/ok"))
    items = [dict(recap(n), link=f"{feed_server.base}/{path}")
             for n, path in enumerate(["ok", "gone", "moved"], 1)]
    ctx = desk(tmp_path, feed_server, items)
    env = {"DIGEST_DATABASE_URL": ctx.settings.database_url, "PATH": "/usr/bin:/bin",
           "COLUMNS": "200", "DIGEST_FETCH_ALLOW_PRIVATE": ",".join(LOOPBACK)}
    run = subprocess.run([sys.executable, "-m", "digest", "preview", "--list", "weekly",
                          "--out", str(tmp_path / "p.html"), "--check-links"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{feed_server.base}/gone" in run.stdout and "404" in run.stdout
    assert f"{feed_server.base}/moved" in run.stdout and "redirects" in run.stdout
    assert "1 broken, 1 redirecting" in run.stdout
    ctx.close()


def test_the_editors_issue_page_marks_broken_and_redirecting_links(
        tmp_path: Path, feed_server: FeedServer) -> None:
    from starlette.testclient import TestClient

    from digest.edges.web.app import create_app
    from digest.services.building.editors import add_editor
    feed_server.add("/ok", Route(body=b"fine", content_type="text/html"))
    feed_server.add("/gone", Route(status=410))
    feed_server.add("/moved", Route(redirect_to="/ok"))
    # Two sections, so the email has in-page links (#s1, #s2) too: never checked.
    items = [dict(recap(n, tags=[tag]), link=f"{feed_server.base}/{path}")
             for n, (path, tag) in enumerate([("ok", "Iran"), ("gone", "Iran"),
                                              ("moved", "Syria")], 1)]
    ctx = desk(tmp_path, feed_server, items, fetch_allow_private=LOOPBACK)
    add_editor(ctx.db, "amal", "a long enough password")
    client = TestClient(create_app(ctx), base_url="https://digest.example")
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf
    client.post("/login", data={"csrf": csrf[1], "name": "amal",
                                "password": "a long enough password"})
    page = client.get("/editor/lists/weekly")
    assert "Check every link" in page.text and "Broken:" not in page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token
    checked = client.post("/editor/lists/weekly/links", data={"csrf": token[1]}).text
    assert 'href="#s1"' in page.text and "1 broken, 1 redirecting" in checked
    assert re.search(r'class="link-broken"><strong>Broken:</strong> <a href="'
                     + re.escape(f"{feed_server.base}/gone") + r'"[^>]*>[^<]*</a> <span '
                     r'class="muted">\(HTTP 410', checked)
    assert re.search(r'class="link-redirect"><strong>Redirects:</strong> <a href="'
                     + re.escape(f"{feed_server.base}/moved"), checked)
    ctx.close()


# --- the footer ----------------------------------------------------------------------------

DEFAULTS = Settings()


@pytest.mark.parametrize(("from_name", "postal_address", "footer"), [
    # The default address names the sender already: shown once, not "name / name · …".
    (DEFAULTS.from_name, DEFAULTS.postal_address, DEFAULTS.postal_address),
    ("The Golden Desk", "1 Golden Street · Example City",
     "The Golden Desk · 1 Golden Street · Example City"),
    # The same name written otherwise (case, spaces) is still the same name.
    ("the golden  desk", "The Golden Desk, 1 Golden Street", "The Golden Desk, 1 Golden Street"),
])
def test_the_footer_names_the_sender_once(tmp_path: Path, feed_server: FeedServer,  # noqa: PLR0913 - fixtures, then the case
                                          locmem: type[LocmemTransport], from_name: str,
                                          postal_address: str, footer: str) -> None:
    from lxml import html as lxml_html

    from subscribers.optin import request_subscription
    ctx = desk(tmp_path, feed_server, [recap(1)], from_name=from_name,
               postal_address=postal_address)
    message = parse(sent(ctx)[0])
    [cell] = lxml_html.fromstring(html_of(message)).find_class("footer")
    shown = [line.strip() for line in cell.text_content().splitlines() if line.strip()]
    assert shown[-1] == footer, shown
    assert text_of(message).rstrip().splitlines()[-1] == footer
    # The confirmation email's footer says it the same way.
    request_subscription(ctx, "weekly", "new@example.org", transport=locmem())
    [confirm] = locmem.outbox
    small = lxml_html.fromstring(html_of(confirm)).find_class("small")[-1]
    assert small.text_content().strip() == footer
    assert text_of(confirm).rstrip().splitlines()[-1] == footer
    ctx.close()


# --- on a phone ----------------------------------------------------------------------------

# For each link of the contents: whether the line its count "(N)" ends on is the line
# its title ends on (the tops of the two ranges' last boxes).
SAME_LINE = """a => {
  const text = a.firstChild, at = text.data.lastIndexOf("(");
  const range = (from, to) => { const r = document.createRange(); r.setStart(text, from);
    r.setEnd(text, to); const boxes = r.getClientRects(); return boxes[boxes.length - 1]; };
  const title = range(at - 2, at - 1), count = range(at, text.data.length);
  return {text: text.data, title: title.top, count: count.top};
}"""


@pytest.mark.parametrize("case", ["demo", "fifty"])
def test_keyword_links_and_the_contents_fit_a_finger_on_a_phone(
        issues: dict[str, EmailMessage], case: str, browser: object,
        tmp_path: Path) -> None:
    page_file = tmp_path / "mail.html"
    page_file.write_text(html_of(issues[case]), encoding="utf-8")
    for width in (375, 600):
        page = browser.new_page(viewport={"width": width, "height": 900})  # type: ignore[attr-defined]
        page.goto(page_file.as_uri())
        links = page.locator(".keywords a")
        assert links.count() > 3, case
        for font, height in links.evaluate_all(
                "all => all.map(a => [parseFloat(getComputedStyle(a).fontSize), "
                "a.getBoundingClientRect().height])"):
            assert font >= 14, (case, width, font)
            if width == 375:  # a tap target on a phone, its padding included
                assert height >= 44, (case, height)
        contents = page.locator(".contents")
        lines = contents.evaluate("e => e.getBoundingClientRect().height / "
                                  "parseFloat(getComputedStyle(e).lineHeight)")
        if width == 375:
            assert lines >= 2, "the contents should wrap at 375 px, or this checks nothing"
        for row in contents.locator("a").evaluate_all(f"all => all.map({SAME_LINE})"):
            assert row["title"] == row["count"], (case, width, row)
        page.close()
