"""Pictures of a benchmark run: throughput and p99 latency against connections.

Used by the benchmarks' ``--plot FILE.png``: one line per server, two panels side by side
(requests per second; p99 in milliseconds, log scale), with the run's conditions in the
title. matplotlib is the ``bench`` extra (``pip install -e '.[bench]'``), imported only
when a picture is asked for; the non-interactive Agg backend draws without a screen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = ["Point", "plot_connections"]


class Point(NamedTuple):
    """One measured row: a server at a number of connections."""

    server: str
    connections: int
    rate: float  # requests (or decisions) per second
    p99_ms: float


def plot_connections(points: Iterable[Point], path: Path, title: str, unit: str = "req/s") -> None:
    """Draw ``points`` into ``path`` (PNG): throughput and p99 against connections.

    Raises :class:`SystemExit` with the install hint when matplotlib is missing, so a
    benchmark run asked for a picture says why it cannot draw one.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ModuleNotFoundError:
        raise SystemExit(
            "--plot needs matplotlib: pip install -e '.[bench]' (or pip install matplotlib)"
        ) from None

    by_server: dict[str, list[Point]] = {}
    for point in points:
        by_server.setdefault(point.server, []).append(point)
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    measured = sorted({point.connections for rows in by_server.values() for point in rows})
    for server, rows in by_server.items():
        rows.sort(key=lambda point: point.connections)
        connections: Sequence[int] = [point.connections for point in rows]
        throughput.plot(connections, [p.rate for p in rows], marker="o", label=server)
        latency.plot(connections, [p.p99_ms for p in rows], marker="o", label=server)
    for axes in (throughput, latency):
        axes.set_xscale("log", base=2)
        axes.set_xticks(measured, [str(count) for count in measured])
        axes.set_yscale("log")  # a floor (a null server) and the servers on one picture
        axes.yaxis.set_major_formatter(FuncFormatter(_plain))
        axes.yaxis.set_minor_formatter(FuncFormatter(_two_and_five))
        axes.set_xlabel("connections")
        axes.grid(True, which="major", alpha=0.3)
    throughput.set_ylabel(f"{unit} (log scale)")
    throughput.set_title("throughput (higher is better)")
    latency.set_ylabel("p99 latency, ms (log scale)")
    latency.set_title("p99 latency (lower is better)")
    throughput.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plain(value: float, _: object) -> str:
    return f"{value:,.6g}"


def _two_and_five(value: float, _: object) -> str:
    """Label the minor ticks 2 and 5 of each decade only: readable, not crowded."""
    return _plain(value, _) if f"{value:.0e}"[0] in "25" else ""
