"""Side-by-side timing for the benchmarks, by torch.utils.benchmark: methods timed in turn, round after round, so that a
change in machine load (two shared CPU cores) hits all of them alike."""
import statistics

import torch
from torch.utils import benchmark


def interleaved(fns: dict, repeats: int, min_run_time: float = 0.1, threads: int = None) -> tuple:
    """Median seconds per call of each of `fns` ({name: callable}), and each one's last output.

    `repeats` rounds; in each, every method in turn gets one `torch.utils.benchmark.Timer.blocked_autorange`: its first
    calls find a block size (and warm it up: the first round's first call may read from disk or build caches), then
    blocks of calls are timed until `min_run_time` seconds have passed (a method slower than that: one warm-up call and
    one timed call). The Timer synchronises the GPU around its clock and runs with `threads` torch threads (default:
    the current number; the Timer's own default would be 1).
    Returns ({name: median over the rounds of each round's median}, {name: the method's last output})."""
    threads = threads or torch.get_num_threads()
    outs = {k: [None] for k in fns}
    timers = {k: benchmark.Timer("out[0] = f()", globals=dict(f=f, out=outs[k]), num_threads=threads, description=k)
              for k, f in fns.items()}
    rounds = {k: [] for k in fns}
    for _ in range(max(1, int(repeats))):
        for k, t in timers.items(): rounds[k].append(t.blocked_autorange(min_run_time=min_run_time).median)
    return {k: statistics.median(v) for k, v in rounds.items()}, {k: o[0] for k, o in outs.items()}
