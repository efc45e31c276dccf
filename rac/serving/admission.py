"""Admission control of the ingress: refuse at once a request the generator cannot answer in time.

Without it, a request that joins a queue longer than ``ingress.generation_timeout_s`` waits
out the whole timeout and gets 504. :class:`GenerationQueue` counts the generations this
ingress replica has in flight and keeps a moving average (EWMA) of the time one generator
*wave* takes: one batched ``generate`` of up to ``batch_size`` prompts. The generations in
flight fill waves in their order (those that arrive together are batched together), so a
request sent now to the least loaded of ``replicas`` ends with the wave it falls into, of
which the first has been under way since the oldest generation in flight started:

    ahead = in_flight // replicas        (generations ahead of it on the least loaded replica)
    waves = max(1, ceil((ahead + 1) / batch_size) - min(age of the oldest in flight, wave_s) / wave_s)
    expected_s = waves * wave_s          (with nothing ahead: one wave)

When that exceeds the deadline, :meth:`GenerationQueue.admit` raises :class:`Overloaded`
(the ingress answers 503 with ``Retry-After``: the seconds until enough of the queue has
drained). A request that arrives while a wave already generates cannot join it; the
estimate counts it in that wave anyway, so it errs towards admitting (a late request gets
504, as without shedding) rather than towards refusing one that would have been answered.

Each finished generation gives one measurement, its latency divided by the waves it was
expected to wait; one that timed out gives a lower bound, which raises an estimate
below it (a model slower than estimated) and leaves one above it alone. Until the
first generation is measured every request is admitted, and so is one sent while nothing is
in flight: it measures the generator again, so shedding ends when the load does. Each ingress replica counts only the
requests it sent, so with several the estimate is low (it sheds later, never earlier).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Overloaded(Exception):
    """A generation sent now is expected to finish after the deadline.

    Attributes
    ----------
    expected_s
        Seconds the generation was expected to take, queueing included.
    retry_after_s
        Whole seconds until, with no new arrivals, the queue would finish it in time (at least 1).
    """

    def __init__(self, expected_s: float, deadline_s: float):
        super().__init__(f"expected to take {expected_s:.1f}s, over the deadline of {deadline_s:g}s")
        self.expected_s = expected_s
        self.retry_after_s = max(1, math.ceil(expected_s - deadline_s))


class GenerationQueue:
    """Generations in flight from this ingress, and the measured time of one generator wave.

    Parameters
    ----------
    batch_size
        Prompts one generator replica generates together at most (``generator.max_batch_size``).
    replicas
        Generator replicas (the most the deployment scales to).
    deadline_s
        Seconds a generation may take, queueing included (``ingress.generation_timeout_s``).
    smoothing
        Weight of the newest measurement in the moving average of the wave time, in (0, 1].
    shed
        False: admit every request (the estimate is still kept).
    clock
        Monotonic seconds (a test passes its own).
    """

    def __init__(self, batch_size: int, replicas: int, deadline_s: float, smoothing: float = 0.3, shed: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        if batch_size < 1 or replicas < 1:
            raise ValueError(f"batch_size and replicas must be at least 1, got {batch_size} and {replicas}")
        self.batch_size = batch_size
        self.replicas = replicas
        self.deadline_s = deadline_s
        self.smoothing = smoothing
        self.shed = shed
        self.wave_s: float | None = None
        self._clock = clock
        self._started: dict[int, float] = {}  # in flight, oldest first: ticket -> start time
        self._tickets = itertools.count()

    @property
    def in_flight(self) -> int:
        return len(self._started)

    def _expected_waves(self, now: float) -> float:
        """Waves (in units of ``wave_s``) a generation sent at ``now`` waits, its own included."""
        ahead = len(self._started) // self.replicas
        if not ahead:
            return 1.0
        waves = float(math.ceil((ahead + 1) / self.batch_size))
        if self.wave_s:
            # The first wave, the oldest generation's, is partly done.
            oldest = next(iter(self._started.values()))
            waves -= min(now - oldest, self.wave_s) / self.wave_s
        return max(1.0, waves)

    def expected_s(self) -> float | None:
        """Seconds a generation sent now is expected to take (None until one was measured)."""
        if self.wave_s is None:
            return None
        return self._expected_waves(self._clock()) * self.wave_s

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place in the queue for one generation, run inside the ``with`` block.

        Raises
        ------
        Overloaded
            Before the block runs, when the generation is expected to finish after the deadline.
        """
        now = self._clock()
        waves = self._expected_waves(now)
        # With nothing in flight a request is always tried: otherwise an estimate over the deadline,
        # never measured again, would refuse every request after the load has gone.
        if self.shed and self._started and self.wave_s is not None and waves * self.wave_s > self.deadline_s:
            raise Overloaded(waves * self.wave_s, self.deadline_s)
        ticket = next(self._tickets)
        self._started[ticket] = now
        outcome = "failed"
        try:
            yield
            outcome = "answered"
        except TimeoutError:
            outcome = "timed out"
            raise
        finally:
            del self._started[ticket]
            if outcome != "failed":
                self._record((self._clock() - now) / waves, lower_bound=outcome == "timed out")

    def _record(self, wave_s: float, lower_bound: bool = False) -> None:
        if self.wave_s is None:
            self.wave_s = wave_s
        elif not lower_bound or wave_s > self.wave_s:
            # A timed-out generation took longer than it shows: it can only say the estimate is low.
            self.wave_s += self.smoothing * (wave_s - self.wave_s)
