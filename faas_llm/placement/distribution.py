"""An action's observed run times as a distribution: the tail-aware estimate of when a busy instance is free."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

from faas_llm.errors import ConfigError


class RunTimeDistribution:
    """An action's observed run times (seconds): the tail-aware remaining-time estimate of a busy instance.

    LLM run times are heavy-tailed (outputs of 1 to 1,000+ tokens), so "the mean minus what it has
    run" is a poor guess: an instance that has already run past the typical length is likely to be
    one of the long ones. :meth:`expected_remaining` is ``E[R - a | R > a]`` over the empirical
    distribution, for an instance that has run ``a`` seconds.
    """

    def __init__(self, samples: Iterable[float]) -> None:
        self.sorted = sorted(max(0.0, float(x)) for x in samples)
        if not self.sorted:
            raise ConfigError("a run-time distribution needs at least one sample")
        # suffix sums: self._suffix[i] = sum(self.sorted[i:])
        self._suffix = [0.0] * (len(self.sorted) + 1)
        self._suffix2 = [0.0] * (len(self.sorted) + 1)
        for i in range(len(self.sorted) - 1, -1, -1):
            self._suffix[i] = self._suffix[i + 1] + self.sorted[i]
            self._suffix2[i] = self._suffix2[i + 1] + self.sorted[i] ** 2

    @property
    def mean(self) -> float:
        return self._suffix[0] / len(self.sorted)

    def expected_remaining(self, elapsed_s: float) -> float:
        """Expected seconds left for a run that has lasted ``elapsed_s`` (``E[R - a | R > a]``).

        Past the longest sample it returns the mean (the sample is finite; the run is an outlier
        whose end the history says nothing about, so assume it is halfway through a fresh one)."""
        a = max(0.0, elapsed_s)
        i = bisect.bisect_right(self.sorted, a)
        longer = len(self.sorted) - i
        if longer == 0:
            return self.mean
        return self._suffix[i] / longer - a

    @property
    def variance(self) -> float:
        n = len(self.sorted)
        return max(0.0, self._suffix2[0] / n - self.mean**2)

    @classmethod
    def of(cls, samples: Iterable[float], min_samples: int = 1) -> RunTimeDistribution | None:
        """The distribution of ``samples``, or ``None`` with fewer than ``min_samples`` (no history yet)."""
        values = [float(x) for x in samples]
        return cls(values) if values and len(values) >= max(1, min_samples) else None

    def busy_free(self, elapsed_s: Sequence[float], queued: int = 0) -> tuple[float, float]:
        """(expected seconds, standard deviation) until a busy instance is free: the soonest of its runs
        (``elapsed_s``: how long each has run; none known: one just started) by expected remaining time,
        plus ``queued`` runs booked after it (each adds the mean and the variance)."""
        runs = [(self.expected_remaining(a), self.remaining_variance(a)) for a in elapsed_s] or [
            (self.mean, self.variance)]
        expected, var = min(runs)
        q = max(0, queued)
        return expected + q * self.mean, math.sqrt(var + q * self.variance)

    def remaining_variance(self, elapsed_s: float) -> float:
        """``Var[R - a | R > a]`` (past the longest sample: the unconditional variance)."""
        a = max(0.0, elapsed_s)
        i = bisect.bisect_right(self.sorted, a)
        longer = len(self.sorted) - i
        if longer == 0:
            return self.variance
        mean = self._suffix[i] / longer
        return max(0.0, self._suffix2[i] / longer - mean * mean)
