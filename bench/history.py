"""The bench's history: every ``cityflux bench`` run appends its figures (time, commit, machine)
to ``bench/results/history.jsonl``; ``cityflux bench --plot`` draws each ratio over the commits
as a PNG (matplotlib, the ``bench`` extra), so a regression shows at a glance."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

# the ratios against same-run limits: what a regression moves (absolute rates move with the VM)
RATIOS = (
    "drain_vs_c_client",
    "multi_vs_raw_copy",
    "live_vs_mq_bridge",
    "coap_vs_libcoap",
)


def commit(repo: Path) -> str:
    """The checkout's commit (short), with ``+`` when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def append(path: Path, res: dict[str, Any], repo: Path) -> dict[str, Any]:
    """Append one run's figures (numbers only, no per-run detail) as one JSON line."""
    entry = {
        "time": res.get("started"),
        "commit": commit(repo),
        "machine": res.get("machine"),
        "command": res.get("command"),
        "figures": {
            k: v for k, v in res.items() if isinstance(v, int | float) and not isinstance(v, bool)
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return entry


def load(path: Path) -> list[dict[str, Any]]:
    """Every entry, oldest first (lines that do not parse are skipped)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot(path: Path, png: Path) -> Path:
    """Each ratio over the runs, labelled by commit; one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install 'cityflux[bench]'") from exc
    entries = load(path)
    if not entries:
        raise RuntimeError(f"{path}: no bench runs recorded yet (run `cityflux bench` first)")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(entries) + 3), 4.5))
    xs = list(range(len(entries)))
    # a --quick run (one run of smaller sizes) is noisier than a full one: drawn apart, hollow,
    # and not joined to the line of full runs
    quick = ["--quick" in (e.get("command") or "") for e in entries]
    nan = float("nan")
    for key in RATIOS:
        ys = [e["figures"].get(key) for e in entries]
        if all(y is None for y in ys):
            continue
        full = [nan if y is None or q else y for y, q in zip(ys, quick, strict=True)]
        (line,) = ax.plot(xs, full, marker="o", label=key)
        fast = [nan if y is None or not q else y for y, q in zip(ys, quick, strict=True)]
        color = line.get_color()
        ax.plot(xs, fast, marker="o", linestyle="none", markerfacecolor="none", color=color)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ticks = [
        f"{e['commit']}\n{(e.get('time') or '')[:10]}" + ("\nquick" if q else "")
        for e, q in zip(entries, quick, strict=True)
    ]
    ax.set_xticks(xs, ticks)
    ax.set_ylabel("ratio to the same-run limit or peer")
    ax.set_title("cityflux bench: figures over commits")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
