"""The two engines, the findings they collect, and the hang watchdog.

A target (see :class:`Target`) owns its inputs and its oracle; an engine only makes
inputs and keeps the score. For each input the engine calls ``target.check(value)``,
which returns the oracle's :class:`Problem` list; an exception that escapes ``check`` is
itself a finding (the target catches the exceptions its code under test may raise by
contract, and lets the rest through). An input that takes longer than ``hang_seconds``
is a hang.

Findings are grouped by *signature* (kind and rule, or exception type and where it was
raised), so a bug that a million inputs reach is reported once, with its count and the
first input that reached it; ``repr`` of that input is the reproducer.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import random
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, NamedTuple, Protocol, TextIO, TypeVar

import attrs

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "EXCEPTION",
    "HANG",
    "KINDS",
    "ORACLE",
    "UNSAFE_ACCEPT",
    "EngineUnavailable",
    "Finding",
    "Problem",
    "Report",
    "Target",
    "Watchdog",
    "run_hypothesis",
    "run_random",
]

EXCEPTION = "exception"  # an exception escaped the code under test
HANG = "hang"  # one input took longer than the limit
UNSAFE_ACCEPT = "unsafe-accept"  # a relay was accepted that the oracle cannot justify
ORACLE = "oracle"  # any other broken rule (disagreeing parsers, limits, bad output)
KINDS = (EXCEPTION, HANG, UNSAFE_ACCEPT, ORACLE)
EXIT_HANG = 3  # the status of a run the watchdog ended

T = TypeVar("T")


class Problem(NamedTuple):
    """One broken rule for one input: ``kind`` (one of :data:`KINDS`), a short ``rule``
    that groups equal problems, and the ``detail`` of this occurrence."""

    kind: str
    rule: str
    detail: str = ""


class Target(Protocol[T]):
    """What the engines need from a fuzz target (see the modules beside this one)."""

    @property
    def name(self) -> str: ...

    def corpus(self) -> Sequence[T]:
        """Valid inputs: checked first as they are, then mutated."""
        ...

    def mutate(self, rng: random.Random, corpus: Sequence[T]) -> T:
        """A new input, usually a mutation of a corpus entry."""
        ...

    def check(self, value: T) -> list[Problem]:
        """Run the code under test on ``value``; the oracle's problems (``[]``: none)."""
        ...

    def strategy(self) -> SearchStrategy[T]:
        """The Hypothesis strategy for structured inputs (imports Hypothesis)."""
        ...


@attrs.frozen
class Finding:
    """The first input that showed one signature, and how many inputs showed it."""

    target: str
    engine: str
    kind: str
    rule: str
    detail: str
    reproducer: str  # repr() of the input
    count: int = 1

    def describe(self, width: int = 400, reproducer_width: int = 4000) -> str:
        """Three lines: what, the detail, the input (cut beyond ``reproducer_width``)."""
        reproducer = self.reproducer
        if len(reproducer) > reproducer_width:
            reproducer = f"{reproducer[:reproducer_width]}... ({len(reproducer)} characters)"
        lines = [f"[{self.target}/{self.engine}] {self.kind}: {self.rule} ({self.count} inputs)"]
        if self.detail:
            lines.append(f"    {self.detail[:width]}")
        lines.append(f"    input: {reproducer}")
        return "\n".join(lines)


MAX_SIGNATURES = 100  # distinct signatures kept per run; further ones are only counted


@attrs.define
class Report:
    """The score of one engine on one target."""

    target: str
    engine: str
    inputs: int = 0
    seconds: float = 0.0
    counts: Counter[str] = attrs.field(factory=Counter)  # findings by kind
    findings: dict[tuple[str, str], Finding] = attrs.field(factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    def add(self, problem: Problem, value: object) -> None:
        self.counts[problem.kind] += 1
        key = (problem.kind, problem.rule)
        found = self.findings.get(key)
        if found is not None:
            self.findings[key] = attrs.evolve(found, count=found.count + 1)
        elif len(self.findings) < MAX_SIGNATURES:
            self.findings[key] = Finding(
                self.target, self.engine, problem.kind, problem.rule, problem.detail, repr(value)
            )


def exception_problem(exc: BaseException) -> Problem:
    """An escaped exception, grouped by its type and the place it was raised: the last
    frame in relaypolicy (outside this package) and the frame that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [
        frame
        for frame in frames
        if frame.filename.startswith(_PACKAGE) and not frame.filename.startswith(_HERE)
    ]
    places = [f"{os.path.basename(frame.filename)}:{frame.lineno}" for frame in ours[-1:]]
    places += [f"{os.path.basename(frame.filename)}:{frame.lineno}" for frame in frames[-1:]]
    where = " -> ".join(dict.fromkeys(places))
    return Problem(EXCEPTION, f"{type(exc).__name__} at {where}", f"{exc!r:.300}")


_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PACKAGE = os.path.dirname(os.path.dirname(_HERE.rstrip(os.sep))).rstrip(os.sep) + os.sep


class Watchdog:
    """Watches the input being checked, from a thread of its own.

    The engines measure every input and report a slow one as a hang when it ends. An
    input that never ends is reported here: after ``limit`` seconds the watchdog prints it
    to ``out``; with ``exit_after`` set it then ends the process (status
    :data:`EXIT_HANG`) when the input has run that long. Code that loops inside C while
    holding the interpreter lock starves this thread, so ``exit_after`` also arms
    :mod:`faulthandler`, which needs no lock: it prints every thread's stack and exits
    (re-run with the same ``--seed`` to get the input).
    """

    def __init__(
        self, limit: float, *, exit_after: float | None = None, out: TextIO | None = None
    ) -> None:
        self.limit = limit
        self.exit_after = exit_after
        self.out = out if out is not None else sys.stderr
        self.label = ""
        self.value: object = None
        self.started = 0.0  # 0: idle
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._faulthandler = False

    def __enter__(self) -> Watchdog:
        self._thread = threading.Thread(target=self._watch, name="fuzz-watchdog", daemon=True)
        self._thread.start()
        if self.exit_after is not None:
            try:
                faulthandler.dump_traceback_later(self.exit_after * 2, exit=True)
                self._faulthandler = True
            except (ValueError, OSError, RuntimeError):  # no usable stderr
                pass
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._faulthandler:
            faulthandler.cancel_dump_traceback_later()

    def _watch(self) -> None:
        tick = max(min(self.limit / 4, 1.0), 0.01)
        warned = 0.0
        while not self._stop.wait(tick):
            started = self.started
            if self._faulthandler and self.exit_after is not None:
                faulthandler.dump_traceback_later(self.exit_after * 2, exit=True)
            if not started:
                continue
            running = time.perf_counter() - started
            if running > self.limit and warned != started:
                warned = started
                print(
                    f"fuzz: {self.label}: input still running after {running:.1f} s: "
                    f"{self.value!r:.2000}",
                    file=self.out,
                    flush=True,
                )
            if self.exit_after is not None and running > self.exit_after:
                print(f"fuzz: {self.label}: giving up on a hung input", file=self.out, flush=True)
                os._exit(EXIT_HANG)


class _Runner(Generic[T]):
    """Checks one input at a time and scores it into a report."""

    def __init__(
        self,
        target: Target[T],
        report: Report,
        hang_seconds: float,
        watchdog: Watchdog | None,
        timer: Callable[[], float],
    ) -> None:
        self.check = target.check
        self.report = report
        self.hang_seconds = hang_seconds
        self.watchdog = watchdog
        self.timer = timer
        if watchdog is not None:
            watchdog.label = f"{target.name}/{report.engine}"

    def __call__(self, value: T) -> None:
        watchdog, timer = self.watchdog, self.timer
        if watchdog is not None:
            watchdog.value = value
            watchdog.started = time.perf_counter()
        start = timer()
        try:
            problems = self.check(value)
        except Exception as exc:
            problems = [exception_problem(exc)]
        elapsed = timer() - start
        if watchdog is not None:
            watchdog.started = 0.0
        self.report.inputs += 1
        if elapsed > self.hang_seconds:
            problems.append(Problem(HANG, f"over {self.hang_seconds:g} s", f"{elapsed:.2f} s"))
        for problem in problems:
            self.report.add(problem, value)


def run_random(
    target: Target[T],
    *,
    inputs: int,
    seed: int = 0,
    max_seconds: float | None = None,
    hang_seconds: float = 1.0,
    watchdog: Watchdog | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> Report:
    """The random engine: the corpus as it is, then mutations of it, ``inputs`` in all.

    Deterministic for a given ``seed`` (each target draws from its own
    ``random.Random``), so a run can be repeated exactly.
    """
    report = Report(target.name, "random")
    run = _Runner(target, report, hang_seconds, watchdog, timer)
    rng = random.Random(f"{seed}:{target.name}")  # noqa: S311 - fuzzing, not secrets
    corpus = list(target.corpus())
    mutate = target.mutate
    began = time.perf_counter()
    deadline = began + max_seconds if max_seconds is not None else None
    for index in range(inputs):
        run(corpus[index] if index < len(corpus) else mutate(rng, corpus))
        if deadline is not None and index & 255 == 0 and time.perf_counter() > deadline:
            break
    report.seconds = time.perf_counter() - began
    return report


class _OutOfTime(Exception):
    pass


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (Hypothesis is not installed)."""


def run_hypothesis(
    target: Target[T],
    *,
    inputs: int,
    seed: int = 0,
    max_seconds: float | None = None,
    hang_seconds: float = 1.0,
    watchdog: Watchdog | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> Report:
    """The Hypothesis engine: ``inputs`` examples of ``target.strategy()``.

    Hypothesis is a development dependency; it is imported here, and a clear
    :class:`EngineUnavailable` says so when it is missing. Findings are collected, not raised,
    so every example runs (there is no shrinking: the first input of each signature is
    kept as it came).
    """
    try:
        from hypothesis import HealthCheck, Phase, Verbosity, given, settings
        from hypothesis import seed as hypothesis_seed
    except ImportError:
        raise EngineUnavailable(
            "the hypothesis engine needs Hypothesis: pip install hypothesis "
            "(or relaypolicy[dev]), or use --engine random"
        ) from None
    report = Report(target.name, "hypothesis")
    run = _Runner(target, report, hang_seconds, watchdog, timer)
    began = time.perf_counter()
    deadline = began + max_seconds if max_seconds is not None else None

    @hypothesis_seed(seed)
    @settings(
        max_examples=inputs,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    @given(target.strategy())
    def fuzz(value: T) -> None:
        if deadline is not None and time.perf_counter() > deadline:
            raise _OutOfTime
        run(value)

    with contextlib.suppress(_OutOfTime):
        fuzz()
    report.seconds = time.perf_counter() - began
    return report
