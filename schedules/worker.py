"""The worker that carries out requested runs ("Send now"): one thread, owned and joined.

The scheduler daemon owns one and looks at every tick; the web app owns one, looks when
an editor asks for a run (and once at start), and leaves the run to the scheduler while
one leads somewhere. Either way the run is claimed in the database first
(:func:`schedules.runner.claim_requested`), so it is carried out once, and through
:func:`digest.services.pipeline.run_list` like every other run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from digest.services.storage.context import Context
from digest.services.transports import Transport
from schedules.runner import carry_out_requested

log = logging.getLogger(__name__)

THREAD_NAME = "digest-requested-runs"


class RunWorker:
    """Carries out requested runs on one thread of its own until closed.

    ``defer`` (the web app's): asked before each look; True leaves the runs to the
    scheduler that leads. ``should_stop`` (the daemon's stop flag) is asked between
    batches besides closing, which stops a run there (the next claimer resumes it).
    """

    def __init__(self, ctx: Context, *, defer: Callable[[], bool] | None = None,
                 transport_factory: Callable[[], Transport] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.ctx = ctx
        self.defer = defer
        self.transport_factory = transport_factory
        self._should_stop = should_stop
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._looks: list[Future[int]] = []
        # Its thread starts with the first look, and close() joins it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)

    def nudge(self) -> None:
        """Look for requested runs soon. One look runs at a time; one more may wait
        behind it (for a run asked for while the running look had already looked)."""
        with self._lock:
            if self._closing.is_set():
                return
            self._looks = [f for f in self._looks if not f.done()]
            if len(self._looks) < 2:
                self._looks.append(self._executor.submit(self._look))

    def stopping(self) -> bool:
        """Whether a run should stop at its next batch boundary."""
        return self._closing.is_set() or (self._should_stop is not None
                                          and self._should_stop())

    def _look(self) -> int:
        if self.stopping():
            return 0
        try:
            if self.defer is not None and self.defer():
                log.info("a scheduler leads: it carries out the requested runs")
                return 0
            return carry_out_requested(self.ctx, transport_factory=self.transport_factory,
                                       should_stop=self.stopping)
        except Exception:  # the run records its own failure; this is the database's
            log.exception("could not look for requested runs")
            return 0

    def close(self) -> None:
        """Start no new run, stop a running one at its next batch boundary, and join the
        thread."""
        with self._lock:
            self._closing.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
