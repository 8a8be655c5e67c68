"""How many torch threads should the trainer use by default? Time per training batch by thread count, under load.

Run: ``python benchmarks/bench_train_threads.py [--repeats 3] [--batches 15]``.
Writes docs/benchmarks/train-threads.md.

Each measurement trains the default model of one user tower on
MovieLens-100K (real data, see bench_train_data.py) for ``--batches`` batches
of the default size in a fresh subprocess with ``threads=N``, and records the
wall time and the CPU time per batch. "one core kept busy" runs the
same while another process of this script keeps one core fully busy (a
pure-Python spin loop), the situation of a shared 2-core machine or a laptop
with a browser open; "as found" adds nothing to whatever else the machine runs
(the load averages below say how quiet it was). Each row also gives the
CPU time per batch. Settings are interleaved across repeats, so all see the same
background load; medians are reported with their spread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, spread, write_report

LOADS = ("as found", "one core kept busy")


def run_one(tower: str, threads: int, batches: int) -> dict:
    import dataclasses

    import bench_train_data
    import torch

    from rechub_serving.train import build_dssm, prepare_match_data
    from rechub_serving.train.trainer import MatchTrainer

    data = prepare_match_data(bench_train_data.ml100k(), mode=2)
    windows = max(2, round(1024 / data.seq_max_len))  # the trainer's windows per batch
    data = dataclasses.replace(  # the first `batches` batches of an epoch, no validation: a fixed amount of work
        data,
        train={k: v[: batches * 1024] for k, v in data.train.items()},
        windows={k: v[: batches * windows] for k, v in data.windows.items()},
        val=None,
    )
    torch.manual_seed(0)
    model = build_dssm(data, user_tower=tower)
    trainer = MatchTrainer(model, mode=2, n_epoch=1, progress=False, threads=threads)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(data)
    return {"batch_s": (time.perf_counter() - start) / batches, "cpu_s": (time.process_time() - cpu) / batches}


def _measure(tower: str, threads: int, batches: int) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RECHUB_TRAIN_THREADS"):
        env.pop(var, None)
    cmd = [sys.executable, __file__, "--_one", json.dumps([tower, threads, batches])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=15, help="training batches timed per measurement")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        print(json.dumps(run_one(*json.loads(args._one))))
        return None
    import torch

    counts = [int(t) for t in args.threads.split(",")]
    started = time.perf_counter()
    results: dict[tuple, list[float]] = {}
    cpu: dict[tuple, list[float]] = {}
    for load in LOADS:
        spinner = None
        if load == LOADS[1]:
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for _ in range(args.repeats):
                for tower in ("sequence", "mlp"):
                    for n in counts:
                        got = _measure(tower, n, args.batches)
                        results.setdefault((load, tower, n), []).append(got["batch_s"])
                        cpu.setdefault((load, tower, n), []).append(got["cpu_s"])
                        print(load, tower, n, got, flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    rows = []
    for load in LOADS:
        for tower in ("sequence", "mlp"):
            one = results[(load, tower, 1)]
            for n in counts:
                times = results[(load, tower, n)]
                ratios = [a / b for a, b in zip(times, one)]
                rows.append([load, tower, n, spread(times), spread(ratios), spread(cpu[(load, tower, n)])])
    import statistics

    top = max(counts)
    verdict = []
    for load in LOADS:
        for tower in ("sequence", "mlp"):
            r = statistics.median(a / b for a, b in zip(results[(load, tower, top)], results[(load, tower, 1)]))
            verdict.append(f"{load}, {tower}: {top} threads take {r:.2f}x the time of 1")
    body = (
        "**Result.** " + "; ".join(verdict) + ". The default (`DEFAULT_THREADS` in "
        "`rechub_serving/train/trainer.py`, overridable with `threads=`, `--threads` or `$RECHUB_TRAIN_THREADS`) "
        "is the count that is never slower on a busy machine."
        " On a machine whose load average stays below its core count, more threads may pay off for large "
        "towers: measure with this script and set `threads=` or `$RECHUB_TRAIN_THREADS`.\n\n"
        f"torch's own default on this machine: {torch.get_num_threads()} threads. "
        f"{args.repeats} repeats of {args.batches} training batches (about 1,024 predictions each, the defaults' "
        f"batch), {time.perf_counter() - started:,.0f} s in all.\n\n"
        + markdown_table(
            ["machine", "user tower", "threads", "s per batch", "time vs 1 thread", "CPU s per batch"], rows
        )
    )
    out = write_report("train-threads", "Trainer threads: one thread against torch's default", body, args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
