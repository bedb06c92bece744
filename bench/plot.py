"""PNG charts of a bench result (``slotkeeper bench --plot DIR``): the side-by-side bars of
slotkeeper and the reference, and the curves C1..C3. Needs matplotlib (the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slotkeeper.broker.errors import InvalidArgument


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidArgument("--plot needs matplotlib: pip install 'slotkeeper[plot]'") from None
    return plt


def _bars(plt: Any, result: dict[str, Any], path: Path) -> bool:
    wl = result.get("workloads", {})
    panels: list[tuple[str, dict[str, float]]] = []

    def add(title: str, *where: str) -> None:
        vals = {}
        for spec in ("slotkeeper", "reference"):
            d: Any = wl
            for k in (where[0], spec, *where[1:]):
                d = d.get(k) if isinstance(d, dict) else None
            if isinstance(d, int | float):
                vals[spec] = float(d)
        if vals:
            panels.append((title, vals))

    add("W1 cycles/s", "W1", "cycles_per_s")
    add("W1 client CPU us/cycle", "W1", "client_cpu_us_per_cycle")
    add("W3 handoff p50 ms", "W3", "p50_ms")
    add("W3 handoff p99 ms", "W3", "p99_ms")
    for key, row in wl.get("W2", {}).items():
        vals = {
            s: float(row[s]["utilisation"])
            for s in ("slotkeeper", "reference")
            if s in row and row[s].get("hold_ms", 0) > 0  # (0 ms holds: utilisation means nothing)
        }
        if vals:
            panels.append((f"W2 {key.removeprefix('hold_')} utilisation", vals))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    axes = axes if len(panels) > 1 else [axes]
    for ax, (title, vals) in zip(axes, panels, strict=True):
        ax.bar(list(vals), list(vals.values()), color=["#1f77b4", "#aaaaaa"][: len(vals)])
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _c1(plt: Any, rows: list[dict[str, Any]], path: Path) -> None:
    x = [r["processes"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(x, [r["cycles_per_s"] for r in rows], "o-")
    a.set_xscale("log", base=2)
    a.set_xlabel("client processes")
    a.set_ylabel("cycles/s")
    a.set_title(f"C1 throughput (8 slots, hold {rows[0]['hold_ms']:g} ms)", fontsize=9)
    b.plot(x, [r["utilisation"] for r in rows], "o-", label="utilisation")
    b.plot(x, [r["utilisation_reachable"] for r in rows], "s--", label="of reachable")
    b.plot(x, [r["jain"] for r in rows], "^-", label="Jain")
    b.set_xscale("log", base=2)
    b.set_ylim(0, 1.05)
    b.set_xlabel("client processes")
    b.legend(fontsize=8)
    b.set_title("C1 utilisation and fairness", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _c2(plt: Any, rows: list[dict[str, Any]], path: Path) -> None:
    x = [r["waiters"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(x, [r["release_grant"]["p50_ms"] for r in rows], "o-", label="p50")
    ax.plot(x, [r["release_grant"]["p99_ms"] for r in rows], "s--", label="p99")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("waiters queued")
    ax.set_ylabel("release -> grant ms")
    ax.set_title("C2 cost of a release that grants", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _c3(plt: Any, rows: list[dict[str, Any]], path: Path) -> None:
    x = [r["limits"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for k, label in (("ls", "ls"), ("scrape", "metrics scrape"), ("daemon_pass", "daemon pass")):
        a.plot(x, [r[k]["total_s"] for r in rows], "o-", label=label)
        b.plot(x, [r[k]["longest_call_ms"] for r in rows], "o-", label=label)
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("limits")
        ax.legend(fontsize=8)
    a.set_yscale("log")
    a.set_ylabel("total s")
    a.set_title("C3 whole operation (linear)", fontsize=9)
    b.set_ylim(bottom=0)
    b.set_ylabel("longest single call ms")
    b.set_title("C3 longest call (bounded)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(result: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write the charts this result has data for into ``directory``; returns their paths."""
    plt = pyplot()
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    wl = result.get("workloads", {})
    if _bars(plt, result, out_dir / "bars.png"):
        written.append(out_dir / "bars.png")
    for key, fn in (("C1", _c1), ("C2", _c2), ("C3", _c3)):
        if wl.get(key):
            path = out_dir / f"{key.lower()}.png"
            fn(plt, wl[key], path)
            written.append(path)
    return written
