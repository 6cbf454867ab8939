"""Running a soft-dist command in a process of its own and measuring it as a user would see it: seconds
from start to exit, and the peak resident memory of the command's process, of its largest descendant
(a pool worker, a Ray worker, raylet) and of the whole tree, sampled from Linux /proc."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

SAMPLE_EVERY_S = 0.1


def _children() -> dict[int, list[int]]:
    """ppid -> pids of every process on this machine (Linux /proc)."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after the command name, which may hold spaces
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_pids(root: int) -> list[int]:
    """``root`` and every process below it, now."""
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def tree_rss_mb(root: int) -> dict[int, float]:
    """pid -> resident MB of ``root`` and every process below it, now."""
    return {pid: _rss_mb(pid) for pid in tree_pids(root)}


def run_measured(command: list[str], what: str) -> dict:
    """Run ``command`` (RAY_ADDRESS removed: a command that uses Ray starts its own instance) and sample
    its process tree every SAMPLE_EVERY_S. Returns {seconds, driver_peak_mb, worker_peak_mb,
    total_peak_mb, output}; RuntimeError naming ``what`` with the output's tail on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    peak_driver = peak_worker = peak_total = 0.0
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            rss = tree_rss_mb(proc.pid)
            peak_driver = max(peak_driver, rss.get(proc.pid, 0.0))
            peak_worker = max([peak_worker, *(v for pid, v in rss.items() if pid != proc.pid)])
            peak_total = max(peak_total, sum(rss.values()))
            time.sleep(SAMPLE_EVERY_S)
        seconds = time.perf_counter() - started
        log.seek(0)
        output = log.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed with exit status {proc.returncode}:\n{output[-2000:]}")
    return {"seconds": seconds, "driver_peak_mb": peak_driver, "worker_peak_mb": peak_worker,
            "total_peak_mb": peak_total, "output": output}


def median_over_rounds(rounds: list[dict]) -> dict:
    """Median over rounds of each figure of :func:`run_measured` (plus ``us_per_image``), images/s from the
    median us/image, and the seconds of every round for the spread."""
    out = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    out["images_per_s"] = 1e6 / out["us_per_image"]
    out["seconds_per_round"] = [r["seconds"] for r in rounds]
    return out


def markdown_table(runs: dict[str, dict], what: str, order: list[str]) -> str:
    """One row per "N/NAME" key of ``runs`` (median_over_rounds entries), by N then by ``order``: images/s,
    us/image, seconds of every round, peak memory; ``what`` heads the NAME column."""
    head = ["N", what, "images/s", "us/image", "seconds (rounds)", "peak RSS: process / largest descendant / all"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def sort_key(key: str) -> tuple[int, int]:
        n, name = key.split("/")
        return int(n), order.index(name) if name in order else len(order)

    for key in sorted(runs, key=sort_key):
        n, name = key.split("/")
        e = runs[key]
        rounds = ", ".join(f"{s:.1f}" for s in e["seconds_per_round"])
        lines.append(f"| {int(n):,} | {name} | {e['images_per_s']:,.0f} | {e['us_per_image']:.0f} | {rounds} | "
                     f"{e['driver_peak_mb']:,.0f} / {e['worker_peak_mb']:,.0f} / {e['total_peak_mb']:,.0f} MB |")
    return "\n".join(lines) + "\n"


def require_proc(benchmark: str) -> None:
    """SystemExit unless this machine has Linux /proc, where the memory figures are read."""
    if not Path("/proc/self/status").is_file():
        raise SystemExit(f"soft-dist bench {benchmark}: reads memory from Linux /proc, which this machine lacks")


def alternating_rounds(sizes: list[int], names: list[str], rounds: int) -> Iterator[tuple[int, int, str]]:
    """(round, N, name) for every N and name in each round, the order reversed every other round, so that
    drift on a shared machine falls on all of them alike."""
    for r in range(rounds):
        for n in (sizes if r % 2 == 0 else sizes[::-1]):
            for name in (names if r % 2 == 0 else names[::-1]):
                yield r, n, name


def print_round(benchmark: str, r: int, rounds: int, n: int, name: str, got: dict) -> None:
    """The console line of one measured command of round ``r`` (0-based)."""
    print(f"[bench {benchmark}] round {r + 1}/{rounds} N={n:,} {name}: {got['seconds']:.1f} s "
          f"({n / got['seconds']:.0f} img/s), process {got['driver_peak_mb']:.0f} MB, largest descendant "
          f"{got['worker_peak_mb']:.0f} MB", flush=True)


def rounds_result(measured: dict[tuple[int, str], list[dict]], config: dict, markdown: Path | None, what: str,
                  order: list[str]) -> dict:
    """The benchmark's result from {(N, name): the figures of every round}: {config, runs: {"N/name":
    median_over_rounds}}, and its Markdown table (:func:`markdown_table`) written to ``markdown`` if given."""
    result = {"config": {**config, "sample_every_s": SAMPLE_EVERY_S},
              "runs": {f"{n}/{name}": median_over_rounds(rounds) for (n, name), rounds in measured.items()}}
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(markdown_table(result["runs"], what, order))
    return result
