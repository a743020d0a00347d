"""A fuzz harness that keeps relaypolicy robust: ``python -m relaypolicy.testing.fuzz``.

Theory of operation
-------------------
Four *targets*, each a module here, own their inputs and their oracle:

=========  ==============================================================================
request    request fields over the whole of Unicode through the policies, chains and
           recipes; no exception, no unsafe accept (:mod:`~.relay`)
codec      bytes into the Postfix policy protocol codec, fed whole, line by line and cut
           at random; only ``ProtocolError``, the feeds agree, limits hold (:mod:`~.codec`)
parsers    log text through every login parser, per line and per block; no exception,
           canonical addresses, the block parser agrees with the line parser
           (:mod:`~.logs`)
loader     bytes as a saved IP table file; it loads or raises ``TableFileError``
           (:mod:`~.loader`)
=========  ==============================================================================

Two *engines* (:mod:`~.engine`) drive them: a seeded random engine (the corpus as it is,
then mutations from :mod:`~.mutate`: a million inputs per target in minutes), and a
Hypothesis engine over the structured strategies of :mod:`~.strategies` (Hypothesis is a
development dependency, imported only by that engine). Each input that breaks a rule is
a finding; findings are grouped by signature and reported with ``repr`` of the first
input that showed it. ``docs/testing.md`` (section "Fuzzing") tells how to run it.
"""

from relaypolicy.testing.fuzz.cli import TARGETS, main, make_target, print_reports
from relaypolicy.testing.fuzz.engine import (
    EXCEPTION,
    HANG,
    ORACLE,
    UNSAFE_ACCEPT,
    EngineUnavailable,
    Finding,
    Problem,
    Report,
    Target,
    Watchdog,
    run_hypothesis,
    run_random,
)

__all__ = [
    "EXCEPTION",
    "HANG",
    "ORACLE",
    "TARGETS",
    "UNSAFE_ACCEPT",
    "EngineUnavailable",
    "Finding",
    "Problem",
    "Report",
    "Target",
    "Watchdog",
    "main",
    "make_target",
    "print_reports",
    "run_hypothesis",
    "run_random",
]
