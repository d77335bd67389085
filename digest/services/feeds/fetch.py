"""Fetch feeds over HTTP: concurrent, bounded in time and size, conditional."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from digest import __version__
from digest.services.feeds import outbound
from digest.services.storage.models import FeedStatus

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
USER_AGENT = f"recap-digest/{__version__} (+https://github.com/recap-digest/recap-digest)"


@dataclass(frozen=True)
class FetchRequest:
    """One feed to fetch, with the validators of the last good answer."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    # Its address came from content (an imported file): the first hop is checked too.
    checked: bool = False


@dataclass(frozen=True)
class FetchResult:
    """What fetching one feed gave: a body, "not modified", or an error reason."""

    url: str
    status: FeedStatus
    body: bytes = b""
    final_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one fetch, and the private networks its redirects may reach."""

    timeout: float = 20.0
    max_bytes: int = 10_000_000
    max_redirects: int = 5
    concurrency: int = 10
    allow_private: tuple[str, ...] = ()  # the fetch_allow_private setting


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Clients:
    """The clients of one fetch: ``given`` reaches the operator's feed URLs as they are,
    ``guarded`` follows their redirects, every hop checked (:mod:`outbound`)."""

    given: httpx.AsyncClient
    guarded: httpx.AsyncClient
    max_redirects: int

    @asynccontextmanager
    async def get(self, url: str, headers: dict[str, str], *,
                  checked: bool = False) -> AsyncIterator[httpx.Response]:
        """The answer to GET ``url`` at the end of its redirects, streamed; with
        ``checked``, its first hop is checked as its redirects are."""
        first = self.guarded if checked else self.given
        response = await first.send(first.build_request("GET", url, headers=headers),
                                    stream=True, follow_redirects=False)
        try:
            hop = response.next_request
            if hop is not None:
                await response.aclose()
                if self.max_redirects < 1:
                    raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.",
                                                 request=hop)
                response = await self.guarded.send(hop, stream=True)
            yield response
        finally:
            await response.aclose()


async def _fetch_one(clients: _Clients, request: FetchRequest,
                     limits: FetchLimits) -> FetchResult:
    headers = {}
    if request.etag:
        headers["If-None-Match"] = request.etag
    if request.last_modified:
        headers["If-Modified-Since"] = request.last_modified

    async def run() -> FetchResult:
        async with clients.get(request.url, headers, checked=request.checked) as response:
            if response.status_code == 304:
                return FetchResult(request.url, FeedStatus.NOT_MODIFIED, etag=request.etag,
                                   last_modified=request.last_modified)
            if response.status_code >= 400:
                return FetchResult(request.url, FeedStatus.ERROR,
                                   error=f"HTTP {response.status_code} "
                                         f"{response.reason_phrase}".strip())
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise _TooLarge
            chunks = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise _TooLarge
                chunks.append(chunk)
            return FetchResult(
                request.url, FeedStatus.OK, body=b"".join(chunks), final_url=str(response.url),
                headers=dict(response.headers), etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"))

    try:
        # httpx's timeouts bound each read; a server dripping bytes needs an overall bound.
        return await asyncio.wait_for(run(), timeout=limits.timeout)
    except (TimeoutError, httpx.TimeoutException):
        return FetchResult(request.url, FeedStatus.ERROR,
                           error=f"timed out after {limits.timeout:g} s")
    except _TooLarge:
        return FetchResult(request.url, FeedStatus.ERROR,
                           error=f"larger than {limits.max_bytes} bytes")
    except httpx.TooManyRedirects:
        return FetchResult(request.url, FeedStatus.ERROR,
                           error=f"more than {limits.max_redirects} redirects (a loop?)")
    except outbound.Refused as e:
        where = e.url if request.checked and e.url == request.url else f"redirect to {e.url}"
        return FetchResult(request.url, FeedStatus.ERROR, error=f"{where} {e.reason}")
    except httpx.InvalidURL as e:
        return FetchResult(request.url, FeedStatus.ERROR, error=f"invalid URL: {e}")
    except httpx.HTTPError as e:
        return FetchResult(request.url, FeedStatus.ERROR,
                           error=f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)


async def fetch_all_async(requests: Sequence[FetchRequest], limits: FetchLimits,
                          on_done: Callable[[FetchResult], None] | None = None
                          ) -> list[FetchResult]:
    """Fetch every feed concurrently; results come back in the order asked."""
    semaphore = asyncio.Semaphore(max(1, limits.concurrency))
    policy = outbound.AddressPolicy.allowing(limits.allow_private)
    options: dict[str, Any] = {
        "timeout": httpx.Timeout(limits.timeout), "concurrency": limits.concurrency,
        "headers": {"User-Agent": USER_AGENT,
                    "Accept": "application/atom+xml, application/rss+xml, "
                              "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"}}
    # The first hop is one of the redirects allowed, so the guarded client follows one less.
    async with outbound.client(None, **options) as given, outbound.client(
            policy, follow_redirects=True, max_redirects=max(0, limits.max_redirects - 1),
            **options) as guarded:
        clients = _Clients(given, guarded, limits.max_redirects)

        async def bounded(request: FetchRequest) -> FetchResult:
            async with semaphore:
                result = await _fetch_one(clients, request, limits)
            if on_done is not None:
                on_done(result)
            return result

        return list(await asyncio.gather(*(bounded(r) for r in requests)))


def fetch_all(requests: Sequence[FetchRequest], limits: FetchLimits,
              on_done: Callable[[FetchResult], None] | None = None) -> list[FetchResult]:
    """Fetch every feed concurrently from synchronous code.

    Under a running event loop (the web app, a test driver) the fetch gets a loop of its
    own in a worker thread, since a loop cannot be started inside another.
    """
    return run_async(fetch_all_async(requests, limits, on_done))


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end from blocking code: here, or on a worker thread when
    this thread already runs an event loop (a loop cannot be started inside another)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _image_size(client: httpx.AsyncClient, url: str) -> tuple[int, int] | None:
    from digest.core.imagesize import FIRST_BYTES, image_size
    head = bytearray()
    try:
        async with client.stream("GET", url, headers={
                "Range": f"bytes=0-{FIRST_BYTES - 1}"}) as response:
            if response.status_code not in (200, 206):
                return None
            async for chunk in response.aiter_bytes():
                head += chunk
                if len(head) >= FIRST_BYTES:
                    break
    except outbound.Refused as e:
        where = url if e.url == url else f"{url} (redirected to {e.url})"
        log.warning("image %s: size unknown, %s", where, e.reason)
        return None
    except (httpx.HTTPError, httpx.InvalidURL):
        return None
    return image_size(bytes(head))


async def each_bounded(  # noqa: PLR0913  (the bounds are keyword-only, each named)
        items: Sequence[T], work: Callable[[T], Awaitable[R]], *,
        concurrency: int, timeout: float, deadline: float,
        on_timeout: Callable[[T], R]) -> list[R | None]:
    """``work`` on every item, ``concurrency`` at a time, each within ``timeout`` seconds
    (else ``on_timeout(item)``) and all within ``deadline``; None for an item the deadline
    left unfinished. Results in the items' order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: T) -> R:
        async with gate:
            try:
                return await asyncio.wait_for(work(item), timeout)
            except TimeoutError:
                return on_timeout(item)

    tasks = [asyncio.create_task(one(item)) for item in items]
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    return [task.result() if task in done else None for task in tasks]


def image_sizes(urls: Sequence[str], *, timeout: float = 5.0, concurrency: int = 8,
                allow_private: Sequence[str] = ()) -> dict[str, tuple[int, int]]:
    """The pixel sizes of images by URL, from their first bytes; unknown ones left out.
    Each image within ``timeout`` seconds, all of them within four times that. Feeds name
    these URLs, so every request and redirect is guarded: private addresses are refused
    (and logged) unless ``allow_private`` (CIDR networks) opens them."""
    policy = outbound.AddressPolicy.allowing(allow_private)

    async def run() -> dict[str, tuple[int, int]]:
        async with outbound.client(policy, timeout=timeout, follow_redirects=True,
                                   concurrency=concurrency,
                                   headers={"User-Agent": USER_AGENT}) as client:
            sizes = await each_bounded(urls, lambda url: _image_size(client, url),
                                       concurrency=concurrency, timeout=timeout,
                                       deadline=timeout * 4, on_timeout=lambda url: None)
        return {url: size for url, size in zip(urls, sizes, strict=True) if size}

    return run_async(run()) if urls else {}
