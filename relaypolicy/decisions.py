"""Asking a policy for one decision the way every front end asks: timed, counted, logged.

Theory of operation
-------------------
Every front end (the Postfix policy service, the aiosmtpd handler, the milter, Exim's
socket, OpenSMTPD's filter) builds a :class:`~relaypolicy.model.Request` from what its MTA
sent, then hands it to one :class:`Decider`. The decider asks the policy, and:

- never raises: a policy that raises is logged with its traceback and answered with
  ``451 4.3.0 Policy service error`` (a DEFER decided by ``relaypolicy``, reason
  ``policy-error``): an error is never a relay;
- counts the decision in its :class:`DecisionStats` (by verdict, by reason, and by
  verdict, deciding policy and reason together) and the time the policy took, in the
  buckets of :data:`LATENCY_BUCKETS`; ``relaypolicy ctl stats`` and ``/metrics`` read them;
- logs one line to the ``relaypolicy.decisions`` logger (INFO), in the format of
  :func:`relaypolicy.text.decision_line`.

How the decision becomes bytes for the MTA (``OK``/``DUNNO``, an ``SMFIR_REPLYCODE``, a
``proceed``) stays with the front end. The policy and the log format can be swapped by a
reload (:attr:`Decider.policy`, :attr:`Decider.log_format`); the counters live on.
"""

from __future__ import annotations

import bisect
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from relaypolicy.model import Decision, Request, Verdict, defer
from relaypolicy.policies import Policy
from relaypolicy.replies import POLICY_ERROR
from relaypolicy.text import decision_line

__all__ = ["LATENCY_BUCKETS", "POLICY_ERROR_DECISION", "Decider", "DecisionStats"]

log = logging.getLogger("relaypolicy.decide")
decisions_log = logging.getLogger("relaypolicy.decisions")

# Upper bounds, in seconds, of the decision-latency histogram (``le`` in Prometheus). A
# decision in memory takes microseconds; one that asks Redis, a millisecond or more.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
    1.0,
)

# The decision a policy that raised gets.
POLICY_ERROR_DECISION = defer(*POLICY_ERROR, "relaypolicy", "policy-error")


class DecisionStats:
    """Counters of decisions and a histogram of the time they took.

    :meth:`as_stats` gives them as ``relaypolicy ctl stats`` keys:

    - ``verdict:<verdict>`` and ``reason:<reason>``: decisions by verdict, by reason;
    - ``decision:<verdict>:<policy>:<reason>``: by the three together (policy names are
      configuration step names and reasons are constants: a bounded set);
    - ``policy-errors``: policies that raised;
    - ``decision-seconds-le:<bound>`` (cumulative, as Prometheus histograms count),
      ``decision-seconds-count`` and ``decision-seconds-sum``.
    """

    __slots__ = ("buckets", "decisions", "policy_errors", "seconds")

    def __init__(self) -> None:
        # (verdict, policy, reason) -> decisions: the by-verdict and by-reason counts are
        # sums of these, made when the stats are read, not on every decision.
        self.decisions: Counter[tuple[str, str, str]] = Counter()
        self.policy_errors = 0
        # One count per bound of LATENCY_BUCKETS, then one for longer ones (+Inf).
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds = 0.0

    def observe(self, decision: Decision, seconds: float) -> None:
        """Count one decision that took ``seconds``."""
        self.decisions[(decision.verdict.value, decision.policy, decision.reason)] += 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.seconds += seconds

    def as_stats(self) -> dict[str, float]:
        """The counters and the histogram, as ``stats`` keys (see the class)."""
        by_verdict: Counter[str] = Counter()
        by_reason: Counter[str] = Counter()
        together: dict[str, float] = {}
        for (verdict, policy, reason), count in self.decisions.items():
            by_verdict[f"verdict:{verdict}"] += count
            by_reason[f"reason:{reason}"] += count
            together[f"decision:{verdict}:{policy}:{reason}"] = count
        stats: dict[str, float] = {**by_verdict, **by_reason, **together}
        if self.policy_errors:
            stats["policy-errors"] = self.policy_errors
        total = 0
        for bound, count in zip(LATENCY_BUCKETS, self.buckets, strict=False):
            total += count
            stats[f"decision-seconds-le:{bound:g}"] = total
        stats["decision-seconds-count"] = total + self.buckets[-1]
        stats["decision-seconds-sum"] = self.seconds
        return stats


class Decider:
    """Asks ``policy`` for decisions; counts, times and logs each (see the module).

    Args:
        policy: what decides; replaced on a reload.
        log_format: ``"text"`` or ``"json"`` for the decision lines.
        no_opinion: for a front end that cannot pass a question on to its MTA's own rules
            (an SMTP server of our own), what a NEXT becomes: a function of the request
            giving the refusal. ``None`` (the default) returns NEXT as it is.
        timer: a monotonic clock in seconds (injected for tests).
    """

    __slots__ = ("_no_opinion", "_timer", "log_format", "policy", "stats")

    def __init__(
        self,
        policy: Policy,
        *,
        log_format: str = "text",
        no_opinion: Callable[[Request], Decision] | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if log_format not in ("text", "json"):
            raise ValueError(f'log_format: expected "text" or "json", got {log_format!r}')
        self.policy = policy
        self.log_format = log_format
        self.stats = DecisionStats()
        self._no_opinion = no_opinion
        self._timer = timer

    def decide(
        self,
        request: Request,
        *,
        peer: str,
        record: bool = True,
        log_fields: Mapping[str, str] | None = None,
    ) -> Decision:
        """The policy's decision for ``request``; never raises.

        ``peer`` names the connection in the log when the policy raises. ``log_fields`` go
        to the decision line (``recipient``, ``stage``, ``login``… see
        :func:`~relaypolicy.text.decision_line`). ``record=False`` returns the policy's own
        answer (a NEXT stays NEXT), neither counted nor logged: a question asked on the
        side, such as the aiosmtpd handler's check at ``MAIL FROM``.
        """
        timer = self._timer
        started = timer()
        try:
            decision = self.policy.check(request)
        except Exception:
            # A policy must not raise; if one does, fail closed and say so.
            log.exception("%s: policy raised; answering with a temporary refusal", peer)
            self.stats.policy_errors += 1
            decision = POLICY_ERROR_DECISION
        if not record:
            return decision
        if decision.verdict is Verdict.NEXT and self._no_opinion is not None:
            decision = self._no_opinion(request)
        self.stats.observe(decision, timer() - started)
        if decisions_log.isEnabledFor(logging.INFO):
            message, args = decision_line(
                request, decision, json=self.log_format == "json", **(log_fields or {})
            )
            _log_info(decisions_log, message, args)
        return decision


def _log_info(logger: logging.Logger, message: str, args: tuple[Any, ...]) -> None:
    """``logger.info(message, *args)`` for a caller that has checked the level already.

    The same record through the same handlers, without :meth:`logging.Logger.findCaller`'s
    walk up the stack, which costs as much as formatting the line: this runs once per
    decision (measured with ``benchmarks/bench_relay_check.py``).
    """
    frame = sys._getframe(1)
    code = frame.f_code
    logger.handle(
        logger.makeRecord(
            logger.name,
            logging.INFO,
            code.co_filename,
            frame.f_lineno,
            message,
            args,
            None,
            code.co_name,
        )
    )
