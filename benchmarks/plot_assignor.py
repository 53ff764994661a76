"""The log-log plot ``bench_assignor.py --plot PATH`` writes: time against partitions.

matplotlib is an optional extra (``pip install 'capgroup[plot]'``); this module is imported
only when ``--plot`` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench_assignor import Row

__all__ = ["plot"]

#: (label, value of a row or None, line style): one line per series, in both panels.
SERIES: list[tuple[str, Callable[[Row], float | None], dict[str, object]]] = [
    ("capgroup leader path (plan_group)", lambda r: r.leader_ms, {"color": "C0", "marker": "o"}),
    (
        "capgroup balance.assign alone",
        lambda r: r.assign_ms,
        {"color": "C0", "marker": ".", "linestyle": ":", "linewidth": 1},
    ),
    (
        "Java CooperativeStickyAssignor, warm",
        lambda r: r.java.median_ms if r.java else None,
        {"color": "C1", "marker": "s"},
    ),
    (
        "Java CooperativeStickyAssignor, 1st call in a fresh JVM",
        lambda r: r.java.first_ms if r.java else None,
        {"color": "C1", "marker": "s", "linestyle": "--", "markerfacecolor": "none"},
    ),
    ("round-robin baseline (Python)", lambda r: r.rr_ms, {"color": "C2", "marker": "^"}),
]


def plot(rows: Sequence[Row], path: Path, *, title: str = "") -> None:
    """Write a PNG with one panel per case (fresh, remove1), both axes logarithmic.

    Points are placed at their partition count and labelled ``partitions/members`` on the x
    axis; a series Java did not measure is left out.
    """
    import matplotlib  # an optional extra, imported only to plot

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    cases = ["fresh", "remove1"]
    fig, axes = plt.subplots(1, len(cases), figsize=(11, 5.2), sharey=True)
    for ax, case in zip(axes, cases, strict=True):
        ordered = sorted(
            (r for r in rows if r.case == case), key=lambda r: (r.partitions, r.members)
        )
        for label, value, style in SERIES:
            points = [(r.partitions, v) for r in ordered if (v := value(r)) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=label, **style)  # type: ignore[arg-type]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([r.partitions for r in ordered])
        ax.set_xticklabels([f"{_short(r.partitions)}/{r.members:,}" for r in ordered])
        ax.minorticks_off()
        ax.set_xlabel("partitions / members")
        ax.set_title(
            "fresh assignment" if case == "fresh" else "remove1: one member of a stable group died"
        )
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("time per call (ms, log)")
    # One legend under both panels, where it hides no point.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"Assignor time against group size ({title})" if title else "Assignor time")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(n: int) -> str:
    """1000000 as 1M, 100000 as 100k."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"
