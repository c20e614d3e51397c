"""decord against PyAV behind glscl.video.sample_frames, side by side in one run: time per video and the ratio, and
whether the two return identical frames on every video.

Two sets of videos:
- the toy world (data/toy: 96 px, 4 fps, 12 s, H.264 written by PyAV), sampled as the toy preset samples;
- MSR-VTT-like clips (320x240, 30 fps, 15 s; benchmarks/bench_frame_cache.py draws them), 12 frames at 1 fps.

Each video is read by every reader in turn (the order alternates between videos), `--passes` times; the table gives
the mean milliseconds per video and the ratio to decord. 'decord, no header check' is decord without the PyAV
header read that `sample_frames` adds to catch truncated files: it shows what that check costs.

    python benchmarks/bench_video_backends.py [--toy-videos 240] [--msrvtt-videos 8] [--passes 2]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import glscl.data as D
from glscl.config import load_config
from glscl.presetdata import ensure_data


def decord_no_check(path, max_frames, fps, rule):
    "decord as sample_frames used it before the truncation check: open, index, get_batch."
    import decord
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return vr.get_batch(D.frame_indices(len(vr), float(vr.get_avg_fps()), max_frames, fps, rule).tolist()).asnumpy()


READERS = {
    "decord": lambda p, m, f, r: D.sample_frames(p, m, f, r, backend="decord")[0],
    "pyav": lambda p, m, f, r: D.sample_frames(p, m, f, r, backend="pyav")[0],
    "decord, no header check": decord_no_check,
}


def bench(name, videos, max_frames, fps, rule, passes):
    times = {k: [] for k in READERS}
    same, decoded = 0, []
    for rep in range(passes):
        for i, p in enumerate(videos):
            order = list(READERS) if (i + rep) % 2 == 0 else list(READERS)[::-1]
            out = {}
            for k in order:
                t = time.perf_counter()
                out[k] = READERS[k](p, max_frames, fps, rule)
                times[k].append(time.perf_counter() - t)
            if rep == 0:
                same += (np.array_equal(out["decord"], out["pyav"])
                         and np.array_equal(out["decord"], out["decord, no header check"]))
                stats = {}
                D._read_pyav(Path(p), max_frames, fps, rule, stats)
                with D.av.open(str(p)) as c: n = c.streams.video[0].frames
                decoded.append((stats["decoded"], len(out["pyav"]), n))
    base = np.mean(times["decord"])
    print(f"\n{name}: {len(videos)} videos, {max_frames} frames at {fps} fps ({rule}), {passes} passes")
    print(f"identical frames from decord and PyAV: {same} of {len(videos)} videos")
    d = np.array(decoded)
    print(f"PyAV decoded {d[:, 0].mean():.1f} frames per video to return {d[:, 1].mean():.1f} (videos of "
          f"{d[:, 2].mean():.0f} frames)")
    print("| reader | ms per video | ratio to decord |\n| --- | ---: | ---: |")
    for k, ts in times.items(): print(f"| {k} | {1000 * np.mean(ts):.2f} | {np.mean(ts) / base:.2f} |")
    return same == len(videos)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--toy-videos", type=int, default=240); ap.add_argument("--msrvtt-videos", type=int, default=8)
    ap.add_argument("--passes", type=int, default=2)
    a = ap.parse_args(argv)
    cfg = load_config("toy")
    ensure_data(cfg)
    toy = sorted(Path(cfg.video_dir).glob("*.mp4"), key=lambda p: int(p.stem[5:]))[: a.toy_videos]
    ok = bench("toy world", toy, cfg.max_frames, cfg.fps, getattr(cfg, "frame_sampling", "glscl"), a.passes)
    if a.msrvtt_videos:
        from bench_frame_cache import msrvtt_like
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            root = msrvtt_like(Path(d), a.msrvtt_videos)
            print(f"\n(drew {a.msrvtt_videos} MSR-VTT-like clips in {time.perf_counter() - t:.0f} s)")
            vids = sorted((root / "videos").glob("*.mp4"))
            ok &= bench("MSR-VTT-like clips", vids, 12, 1.0, "glscl", a.passes)
    if not ok: sys.exit("decord and PyAV disagree on some video: see above")


if __name__ == "__main__": main()
