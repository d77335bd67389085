"""Check the links of an issue before it goes out: broken, redirecting, or fine.

Each link gets a HEAD request (no redirects followed, so a redirect is seen as one); a
server that refuses HEAD (405, 501, or a dropped connection) gets a GET of which only the
first bytes are read. Links are checked concurrently, each within ``timeout`` seconds and
all of them within ``deadline``; whatever is left when the deadline passes is reported as
"not checked", never waited for.

Feeds chose these links, so every request and redirect hop goes through the guarded
client (:mod:`digest.services.feeds.outbound`): a link or redirect to a private address is
reported broken, with the reason, and never requested.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urljoin, urlsplit

import httpx

from digest.services.feeds import outbound
from digest.services.feeds.fetch import USER_AGENT, each_bounded, run_async

MAX_REDIRECTS = 5


class LinkState(StrEnum):
    """What a link check found."""

    OK = "ok"
    REDIRECT = "redirect"
    BROKEN = "broken"          # an error status, no answer, or refused (a private address)
    UNCHECKED = "unchecked"    # the deadline passed first


@dataclass(frozen=True)
class LinkResult:
    """What one link answered."""

    url: str
    state: LinkState
    status: int | None = None
    detail: str = ""        # the reason, or where a redirect ends
    final_url: str | None = None

    @property
    def broken(self) -> bool:
        return self.state == LinkState.BROKEN


def links_in(html: str, *, skip_prefixes: Iterable[str] = (),
             schemes: Iterable[str] | None = ("http", "https")) -> list[str]:
    """The distinct links (``<a href>``) of an HTML document with one of ``schemes``
    (None: every link, in-page and mailto ones too), in order of first appearance, their
    character references decoded."""
    # libxml2's HTML parser: linear in the input, where a regex over hostile feed HTML
    # can backtrack; it also decodes &amp; and the like in attribute values.
    import lxml.html
    if not html.strip():
        return []
    skip = tuple(skip_prefixes)
    wanted = None if schemes is None else frozenset(schemes)
    seen: dict[str, None] = {}
    # As bytes with the encoding named: a str with an XML encoding declaration is refused.
    parser = lxml.html.HTMLParser(encoding="utf-8")
    for anchor in lxml.html.fromstring(html.encode("utf-8"), parser=parser).iter("a"):
        url = (anchor.get("href") or "").strip()
        if url and (wanted is None or urlsplit(url).scheme in wanted) and not (
                skip and url.startswith(skip)):
            seen.setdefault(url, None)
    return list(seen)


def issue_links(html: str, base_url: str) -> list[str]:
    """The links of an issue worth checking: http(s) ones (no in-page anchors or mailto),
    each once, our own pages aside (unsubscribe, archive: the issue makes them)."""
    return links_in(html, skip_prefixes=(base_url.rstrip("/") + "/",))


async def _follow(client: httpx.AsyncClient, url: str) -> tuple[str, int]:
    """Where a redirect chain ends (following GETs up to MAX_REDIRECTS) and its status."""
    current = url
    for _ in range(MAX_REDIRECTS):
        async with client.stream("GET", current) as response:
            if response.is_redirect and "location" in response.headers:
                current = urljoin(current, response.headers["location"])
                continue
            return current, response.status_code
    return current, 310


async def _check_one(client: httpx.AsyncClient, url: str) -> LinkResult:
    try:
        try:
            response = await client.head(url)
            status = response.status_code
            if status in (405, 501) or status == 403:
                raise httpx.RemoteProtocolError("HEAD refused")
        except (httpx.RemoteProtocolError, httpx.ReadError):
            async with client.stream("GET", url) as streamed:
                async for _ in streamed.aiter_bytes():
                    break  # the first bytes are enough
                response, status = streamed, streamed.status_code
    except outbound.Refused as e:
        return LinkResult(url, LinkState.BROKEN, detail=e.reason)
    except httpx.TimeoutException:
        return LinkResult(url, LinkState.BROKEN, detail="no answer in time")
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        return LinkResult(url, LinkState.BROKEN, detail=f"{type(e).__name__}: {e}"[:300])
    if response.is_redirect and "location" in response.headers:
        target = urljoin(url, response.headers["location"])
        try:
            final, final_status = await _follow(client, target)
        except outbound.Refused as e:
            return LinkResult(url, LinkState.BROKEN, status,
                              f"redirects to {e.url}, {e.reason}", e.url)
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            return LinkResult(url, LinkState.BROKEN, status,
                              f"redirects to {target}, which fails: {type(e).__name__}", target)
        if final_status >= 400:
            return LinkResult(url, LinkState.BROKEN, status,
                              f"redirects to {final}, which answers {final_status}", final)
        return LinkResult(url, LinkState.REDIRECT, status, f"redirects to {final}", final)
    if status >= 400:
        return LinkResult(url, LinkState.BROKEN, status,
                          f"HTTP {status} {response.reason_phrase}")
    return LinkResult(url, LinkState.OK, status)


async def check_links_async(urls: list[str], *, allow_private: Iterable[str] = (),
                            timeout: float = 8.0, deadline: float = 20.0,
                            concurrency: int = 8) -> list[LinkResult]:
    """Check ``urls``; results in the same order. Links to private addresses are
    refused (reported broken, never requested) unless ``allow_private`` (CIDR networks:
    the ``fetch_allow_private`` setting) opens them."""
    policy = outbound.AddressPolicy.allowing(allow_private)
    async with outbound.client(policy, timeout=httpx.Timeout(timeout), concurrency=concurrency,
                               headers={"User-Agent": USER_AGENT}) as client:
        results = await each_bounded(
            urls, lambda url: _check_one(client, url), concurrency=concurrency,
            timeout=timeout + 1, deadline=deadline,
            on_timeout=lambda url: LinkResult(url, LinkState.BROKEN,
                                              detail="no answer in time"))
    return [result or LinkResult(url, LinkState.UNCHECKED,
                                 detail=f"not checked within {deadline:.0f} s")
            for url, result in zip(urls, results, strict=True)]


def check_links(urls: list[str], *, allow_private: Iterable[str] = (), timeout: float = 8.0,
                deadline: float = 20.0, concurrency: int = 8) -> list[LinkResult]:
    """Blocking form of :func:`check_links_async` (runs its own event loop)."""
    return run_async(check_links_async(urls, allow_private=allow_private, timeout=timeout,
                                       deadline=deadline, concurrency=concurrency))
