"""No request to a private address chosen by content (issue 26, item 2).

A feed we don't control names image URLs and links, and its server names redirects; a
second loopback server (``target``) stands for what they aim at (this machine, the local
network, a cloud's metadata service) and records every request it gets. Nothing here
connects off the machine: the hostile URLs name loopback or private literals, or
``localhost``; the few public addresses below only go through the classifier.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from digest.edges.demo import sample_png
from digest.errors import ConfigError
from digest.services.feeds import outbound
from digest.services.feeds.collect import add_feed, collect
from digest.services.feeds.fetch import image_sizes
from digest.services.feeds.linkcheck import check_links, links_in
from digest.services.storage.context import Context
from digest.services.storage.models import Entry
from digest.settings import load_settings
from tests.feedserver import FeedServer, rss
from tests.test_collect import item
from tests.test_send import recap

ROOT = Path(__file__).resolve().parent.parent
HINT = "fetch_allow_private opens exceptions"


@pytest.fixture
def target() -> Iterator[FeedServer]:
    """What a hostile feed aims at, on this machine: a picture and a page."""
    server = FeedServer()
    server.add("/secret.png", body=sample_png(640, 360, "secret"), content_type="image/png")
    server.add("/secret", body=b"internal", content_type="text/html")
    yield server
    server.close()


@pytest.fixture
def elsewhere() -> Iterator[FeedServer]:
    """Another private address (127.0.0.2) a redirect may point at."""
    server = FeedServer(host="127.0.0.2")
    server.add("/feed.xml", body=rss([item(7)]))
    server.add("/secret", body=b"internal", content_type="text/html")
    yield server
    server.close()


def hostile(target: FeedServer, path: str) -> dict[str, str]:
    """URLs that aim at private addresses, and the refusal each must give."""
    port = target.port
    return {
        f"http://127.0.0.1:{port}{path}": "refused: 127.0.0.1 is a loopback address",
        f"http://localhost:{port}{path}":
            "refused: localhost resolves to 127.0.0.1, a loopback address",
        f"http://[::ffff:127.0.0.1]:{port}{path}":
            "refused: ::ffff:127.0.0.1 is a loopback address",
        # Numeric spellings the resolver reads as 127.0.0.1: judged by that address.
        f"http://2130706433:{port}{path}":
            "refused: 2130706433 resolves to 127.0.0.1, a loopback address",
        f"http://127.1:{port}{path}": "refused: 127.1 resolves to 127.0.0.1, a loopback",
        f"http://0.0.0.0:{port}{path}": "refused: 0.0.0.0 is an unspecified address",
        f"http://[::1]:{port}{path}": "refused: ::1 is a loopback address",
        "http://169.254.169.254/latest/meta-data/iam": "refused: 169.254.169.254 is a "
                                                       "link-local address (a cloud's",
        "http://10.0.0.1:9/secret": "refused: 10.0.0.1 is a private address",
        "http://[fd00::1]:9/secret": "refused: fd00::1 is a private address",
        "http://100.64.0.1:9/secret": "refused: 100.64.0.1 is a shared (carrier-grade NAT)",
    }


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("::ffff:10.0.0.1", "private"), ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("169.254.169.254", "link-local address (a cloud's metadata service)"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("::ffff:169.254.169.254", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.254", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"),
    ("192.0.2.1", "special-purpose"), ("198.18.0.1", "special-purpose"),
    ("0.1.2.3", "special-purpose"),
])
def test_every_kind_of_private_address_is_named(address: str, kind: str) -> None:
    found = outbound.kind_of(ipaddress.ip_address(address))
    assert found is not None and kind in found, (address, found)


@pytest.mark.parametrize("address", ["8.8.8.8", "172.32.0.1", "100.128.0.1",
                                     "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    # Only the classifier sees these: nothing connects to them.
    assert outbound.kind_of(ipaddress.ip_address(address)) is None


def test_the_allow_list_opens_its_networks_and_nothing_else() -> None:
    policy = outbound.AddressPolicy.allowing(["127.0.0.1/32", "10.20.0.0/16", "fd00::/8"])
    allowed = ["127.0.0.1", "::ffff:127.0.0.1", "10.20.30.40", "fd00::5"]
    refused = ["127.0.0.2", "::1", "10.21.0.1", "169.254.169.254", "192.168.0.1"]
    assert [policy.refusal(ipaddress.ip_address(a)) for a in allowed] == [None] * 4
    assert all(policy.refusal(ipaddress.ip_address(a)) for a in refused)
    assert outbound.AddressPolicy().refusal(ipaddress.ip_address("127.0.0.1"))
    with pytest.raises(ConfigError, match="fetch_allow_private"):
        outbound.AddressPolicy.allowing(["localhost"])
    loaded = load_settings(env={"DIGEST_FETCH_ALLOW_PRIVATE": "127.0.0.1/32, 10.0.0.0/8"})
    assert loaded.settings.fetch_allow_private == ["127.0.0.1/32", "10.0.0.0/8"]
    assert load_settings(env={}).settings.fetch_allow_private == []


def test_feed_images_aimed_at_private_addresses_are_never_requested(
        ctx: Context, feed_server: FeedServer, target: FeedServer,
        caplog: pytest.LogCaptureFixture) -> None:
    urls = hostile(target, "/secret.png")
    items = [item(n, summary=f'<p>Lead.</p><img src="{url}" alt="x">')
             for n, url in enumerate(urls, 1)]
    add_feed(ctx.db, feed_server.add("/feed.xml", body=rss(items)), "Hostile")
    with caplog.at_level(logging.WARNING, logger="digest.services.feeds.fetch"):
        report = collect(ctx.db, ctx.settings)
    # The feed itself was added by hand: fetched as given, although it is on loopback.
    assert report.feeds[0].status == "ok" and report.new == len(urls)
    assert target.seen == []
    with ctx.db.session() as s:
        sizes = dict(s.execute(select(Entry.image_url, Entry.image_width)).all())
    assert set(sizes) == set(urls) and set(sizes.values()) == {None}  # size unknown
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for url, reason in urls.items():
        assert f"image {url}: size unknown, {reason}" in logged, url
    assert HINT in logged


def test_with_the_network_allowed_the_same_image_is_sized(
        ctx: Context, feed_server: FeedServer, target: FeedServer) -> None:
    url = target.url("/secret.png")
    add_feed(ctx.db, feed_server.add("/feed.xml", body=rss(
        [item(1, summary=f'<img src="{url}" alt="x">')])))
    collect(ctx.db, ctx.settings.replace(fetch_allow_private=["127.0.0.1/32"]))
    with ctx.db.session() as s:
        assert s.execute(select(Entry.image_width, Entry.image_height)).one() == (640, 360)
    assert target.seen == [("GET", "/secret.png")]


def test_a_name_is_judged_by_the_address_it_resolves_to(target: FeedServer) -> None:
    url = f"http://localhost:{target.port}/secret.png"
    assert image_sizes([url]) == {}
    assert image_sizes([url], allow_private=["10.0.0.0/8", "::1/128"]) == {}
    assert target.seen == []
    # Allowed, the request goes to the address checked, still asking for the name.
    assert image_sizes([url], allow_private=["127.0.0.0/8"]) == {url: (640, 360)}
    assert target.hits("/secret.png")[0]["Host"] == f"localhost:{target.port}"


def test_an_image_redirected_to_a_private_address_is_refused(
        target: FeedServer, elsewhere: FeedServer,
        caplog: pytest.LogCaptureFixture) -> None:
    elsewhere.add("/picture.png", body=sample_png(10, 10, "x"), content_type="image/png")
    moved = target.add("/moved.png", redirect_to=elsewhere.url("/picture.png"))
    with caplog.at_level(logging.WARNING, logger="digest.services.feeds.fetch"):
        assert image_sizes([moved], allow_private=["127.0.0.1/32"]) == {}
    assert elsewhere.seen == []
    assert (f"image {moved} (redirected to {elsewhere.url('/picture.png')}): size unknown, "
            f"refused: 127.0.0.2 is a loopback address; {HINT}") in caplog.text
    assert image_sizes([moved], allow_private=["127.0.0.1/32", "127.0.0.2/32"]) == {
        moved: (10, 10)}


def test_the_link_check_refuses_private_links_and_redirects(
        feed_server: FeedServer, target: FeedServer, elsewhere: FeedServer) -> None:
    urls = hostile(target, "/secret")
    results = check_links(list(urls), timeout=2, deadline=10)
    for result, (url, reason) in zip(results, urls.items(), strict=True):
        assert result.url == url and result.broken, result
        assert result.detail.startswith(reason) and result.detail.endswith(HINT), result
    assert target.seen == []
    # A public-looking first hop (allowed here) whose redirect aims elsewhere.
    moved = feed_server.add("/moved", redirect_to=elsewhere.url("/secret"))
    feed_server.add("/fine", body=b"fine", content_type="text/html")
    fine, refused = check_links([feed_server.url("/fine"), moved],
                                allow_private=["127.0.0.1/32"], timeout=2, deadline=10)
    assert fine.state == "ok"
    assert refused.broken and refused.detail == (
        f"redirects to {elsewhere.url('/secret')}, refused: 127.0.0.2 is a loopback "
        f"address; {HINT}")
    assert elsewhere.seen == []
    assert check_links([moved], allow_private=["127.0.0.0/8"])[0].state == "redirect"
    assert elsewhere.seen == [("GET", "/secret")]


def test_preview_check_links_reports_the_refusal(tmp_path: Path, target: FeedServer,
                                                 feed_server: FeedServer) -> None:
    secret = target.url("/secret")
    url = feed_server.add("/feed.xml", body=rss([dict(recap(1), link=secret)]))
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}", "PATH": "/usr/bin:/bin",
           "COLUMNS": "250", "DIGEST_IMAGE_SIZE_TIMEOUT": "0"}

    def digest(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "digest", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    for argv in (["feeds", "add", url], ["collect"], ["lists", "create", "--list", "weekly"],
                 ["subscribers", "add", "reader@example.org", "--list", "weekly"]):
        assert digest(*argv).returncode == 0, argv
    run = digest("preview", "--list", "weekly", "--out", str(tmp_path / "p.html"),
                 "--check-links")
    assert run.returncode == 1, run.stdout + run.stderr
    assert secret in run.stdout and "refused: 127.0.0.1 is a loopback address" in run.stdout
    assert target.seen == []


def test_a_hand_added_feed_is_fetched_as_given_but_its_redirects_are_checked(
        ctx: Context, feed_server: FeedServer, elsewhere: FeedServer) -> None:
    direct = feed_server.add("/direct.xml", body=rss([item(1)]))
    moved = feed_server.add("/moved.xml", redirect_to=elsewhere.url("/feed.xml"))
    add_feed(ctx.db, direct, "Direct")
    add_feed(ctx.db, moved, "Moved")
    report = {f.url: f for f in collect(ctx.db, ctx.settings).feeds}
    assert report[direct].status == "ok" and report[direct].new == 1
    assert report[moved].status == "error"
    assert report[moved].error == (f"redirect to {elsewhere.url('/feed.xml')} refused: "
                                   f"127.0.0.2 is a loopback address; {HINT}")
    assert elsewhere.seen == []
    allowed = ctx.settings.replace(fetch_allow_private=["127.0.0.2/32"])
    again = {f.url: f for f in collect(ctx.db, allowed).feeds}
    assert again[moved].status == "ok" and again[moved].new == 1
    assert elsewhere.seen == [("GET", "/feed.xml")]


def test_a_feed_imported_from_a_file_is_checked_from_its_first_request(
        ctx: Context, feed_server: FeedServer, elsewhere: FeedServer) -> None:
    """An OPML file's addresses are content: the operator vouches for the file, not for
    each of its outlines, so an outline aimed at this machine or the LAN is refused
    before anything is sent, and ``fetch_allow_private`` opens it."""
    from digest.services.feeds.collect import add_feeds
    internal = elsewhere.url("/feed.xml")
    typed = feed_server.add("/typed.xml", body=rss([item(1)]))
    add_feeds(ctx.db, [(internal, "Reuters World")])
    add_feed(ctx.db, typed, "Typed by hand")
    report = {f.url: f for f in collect(ctx.db, ctx.settings).feeds}
    assert report[internal].status == "error"
    assert report[internal].error == (f"{internal} refused: 127.0.0.2 is a loopback "
                                      f"address; {HINT}")
    assert elsewhere.seen == []
    assert report[typed].status == "ok"  # a feed typed by hand is fetched as given
    allowed = ctx.settings.replace(fetch_allow_private=["127.0.0.2/32"])
    again = {f.url: f for f in collect(ctx.db, allowed).feeds}
    assert again[internal].status == "ok" and again[internal].new == 1
    assert elsewhere.seen == [("GET", "/feed.xml")]


def test_links_are_read_by_a_parser_with_their_references_decoded() -> None:
    html = ('<p><a class="x" href="https://n.example/a?b=1&amp;c=2">one</a> '
            "<A HREF='https://n.example/b'>two</A> <a href=\"#s1\">in page</a> "
            '<a href="mailto:x@n.example">mail</a> <a title=">" href="https://n.example/c">'
            '</a><a href="https://n.example/a?b=1&amp;c=2">again</a></p>')
    assert links_in(html) == ["https://n.example/a?b=1&c=2", "https://n.example/b",
                              "https://n.example/c"]
    assert links_in("") == []


def test_links_in_hostile_html_take_linear_time() -> None:
    # Tags and links that never close: what sends a backtracking regex over tags into
    # time growing faster than the input.
    import time
    benign = '<p><a href="https://n.example/r">Recap</a></p>\n' * 20_000
    for html in ("<a " * 333_334, "<a href=" * 125_000, '<a href="x' * 100_000, benign):
        started = time.perf_counter()
        links_in(html)
        assert time.perf_counter() - started < 1.0, html[:20]


def test_https_is_verified_against_the_name_while_connecting_to_its_address(
        tmp_path: Path) -> None:
    # The connection goes to the address that was checked, but TLS still sends the name
    # and verifies the certificate against it: a certificate for "localhost" is good for
    # https://localhost, not for https://127.0.0.1 (which it does not name).
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = FeedServer(tls=(cert, key))
    try:
        server.add("/p.png", body=sample_png(32, 16, "p"), content_type="image/png")
        script = ("import sys; from digest.services.feeds.fetch import image_sizes; "
                  "print(image_sizes(sys.argv[1:], allow_private=['127.0.0.1/32']))")
        by_name, by_address = f"https://localhost:{server.port}/p.png", server.url("/p.png")
        run = subprocess.run([sys.executable, "-c", script, by_name, by_address], cwd=ROOT,
                             env={"SSL_CERT_FILE": str(cert), "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == repr({by_name: (32, 16)})
    finally:
        server.close()
