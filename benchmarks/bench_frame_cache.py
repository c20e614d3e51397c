"""Clips per second that a DataLoader (same workers, same batch) delivers from the videos and from the frame cache,
side by side in one run, and the cache's size per video; plus what JPEG would trade (size against decode speed).

Two data sets:
- MSR-VTT-like: synthetic H.264 clips of 320x240 at 30 fps, 15 s (what raw MSR-VTT videos look like), at the
  paper's 224 px and 12 frames at 1 fps;
- the toy world (96 px, 4 fps, 12 s; 64 px frames).

A DataLoader pass is timed whole by the wall clock (each pass starts a fresh DataLoader and its worker processes: one
measurement, nothing a Timer could repeat cheaply); the JPEG trade by torch.utils.benchmark (benchmarks/timing.py).

    python benchmarks/bench_frame_cache.py [--videos 24] [--workers 2] [--passes 2]
"""
import argparse
import copy
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved
from glscl.config import load_config
from glscl.data import collate_videos
from glscl.video import write_video
from glscl.framecache import build_frame_cache, FrameCache
from glscl.presetdata import ensure_data, videos_from_config


def msrvtt_like(root: Path, n: int, seconds: int = 15, fps: int = 30, size=(240, 320), seed: int = 0) -> Path:
    "n synthetic clips (moving gradients and a square: H.264 has real work to do) in MSR-VTT's layout."
    rng = np.random.default_rng(seed)
    (root/'videos').mkdir(parents=True, exist_ok=True)
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W]
    sentences = []
    for i in range(n):
        c = rng.integers(0, 255, 3)
        frames = np.empty((seconds * fps, H, W, 3), np.uint8)
        for t in range(seconds * fps):
            base = ((xx + 3 * t) % 256 + (yy * (i + 1)) % 256) // 2
            frames[t] = np.stack([(base + c[k]) % 256 for k in range(3)], -1)
            y, x = (20 + 2 * t) % (H - 40), (40 + 5 * t) % (W - 40)
            frames[t, y:y + 40, x:x + 40] = 255 - c
        write_video(root/'videos'/f'video{i}.mp4', frames, fps)
        sentences.append(dict(caption=f'clip number {i}', video_id=f'video{i}', sen_id=i))
    (root/'MSRVTT_data.json').write_text(json.dumps(dict(info={}, videos=[], sentences=sentences)))
    with open(root/'MSRVTT_train.9k.csv', 'w', newline='') as f:
        w = csv.writer(f); w.writerow(['video_id']); [w.writerow([f'video{i}']) for i in range(n)]
    with open(root/'MSRVTT_JSFUSION_test.csv', 'w', newline='') as f:
        w = csv.writer(f); w.writerow(['key', 'vid_key', 'video_id', 'sentence'])
        w.writerow(['ret0', 'msr0', 'video0', 'clip number 0'])
    return root


def clips_per_second(cfg, vids, workers: int, batch: int, passes: int, uint8: bool = True) -> float:
    """Median over `passes` of clips/s through a DataLoader of VideoDataset (frame cache used when cfg has one).
    `uint8`: pixels handed over as uint8, as training does (the model normalises them); else float CLIP input."""
    rates = []
    for _ in range(passes):
        ds = videos_from_config(cfg, vids, uint8=uint8)
        dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_videos)
        t0 = time.perf_counter(); n = 0
        for b in dl: n += len(b['frames'])
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def jpeg_trade(cache: FrameCache, vids, quality: int = 90, repeats: int = 3) -> dict:
    """Size and decode speed of the cached frames as JPEG (torchvision) against reading the raw uint8 frames: both
    over all of `vids`, timed in turn by torch.utils.benchmark (benchmarks/timing.py), median of `repeats` rounds."""
    from torchvision.io import encode_jpeg, decode_jpeg
    frames = {v: cache.read(v)[0] for v in vids}
    enc = {v: [encode_jpeg(torch.from_numpy(x).permute(2, 0, 1).contiguous(), quality=quality) for x in f]
           for v, f in frames.items()}
    raw = sum(f.nbytes for f in frames.values()); jpg = sum(len(e) for es in enc.values() for e in es)
    frames_n = sum(len(f) for f in frames.values())
    def raw_read():
        # a fresh copy maps the shards anew (FrameCache.__getstate__), as each DataLoader worker does
        w = copy.copy(cache)
        return [w.read(v) for v in vids]
    t, _ = interleaved(dict(raw=raw_read, jpeg=lambda: [[decode_jpeg(e) for e in enc[v]] for v in vids]), repeats,
                       min_run_time=0.2)
    return dict(ratio=raw / jpg, raw_fps=frames_n / t['raw'], jpeg_fps=frames_n / t['jpeg'],
                raw_kib=raw / len(vids) / 1024, jpeg_kib=jpg / len(vids) / 1024)


def run(name, cfg, workers, batch, passes):
    from glscl.framecache import split_videos
    vids = split_videos(cfg, [cfg.train_split])
    t0 = time.perf_counter()
    r = build_frame_cache(cfg, [cfg.train_split], progress=False)
    build_s = time.perf_counter() - t0
    video = clips_per_second(cfg.replace(frame_cache=None), vids, workers, batch, passes)
    cached = clips_per_second(cfg, vids, workers, batch, passes)
    video_f = clips_per_second(cfg.replace(frame_cache=None), vids, workers, batch, passes, uint8=False)
    cached_f = clips_per_second(cfg, vids, workers, batch, passes, uint8=False)
    j = jpeg_trade(FrameCache(cfg.frame_cache), vids[:min(len(vids), 24)])
    print(f"\n{name}: {len(vids)} videos, {cfg.max_frames} frames at {cfg.fps} fps, {cfg.image_size} px, "
          f"DataLoader with {workers} workers, batch {batch}, median of {passes} passes")
    print(f"  uint8 pixels (what training loads)   from the videos {video:7.1f} clips/s, from the frame cache "
          f"{cached:7.1f} clips/s -> {cached / video:.1f}x")
    print(f"  float CLIP input (4x the bytes)      from the videos {video_f:7.1f} clips/s, from the frame cache "
          f"{cached_f:7.1f} clips/s -> {cached_f / video_f:.1f}x")
    print(f"  cache: {r['bytes_per_video'] / 1024:.0f} KiB a video (uint8), built in {build_s:.1f} s "
          f"({len(vids) / build_s:.1f} videos/s)")
    print(f"  as JPEG q90: {j['jpeg_kib']:.0f} KiB a video ({j['ratio']:.1f}x smaller), decoded at {j['jpeg_fps']:.0f} "
          f"frames/s against {j['raw_fps']:.0f} frames/s reading uint8 ({j['raw_fps'] / j['jpeg_fps']:.1f}x slower)")
    return dict(video=video, cached=cached, kib=r['bytes_per_video'] / 1024, **{f'jpeg_{k}': v for k, v in j.items()})


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--videos', type=int, default=24); ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--batch', type=int, default=8); ap.add_argument('--passes', type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='glscl-bench-cache-'))
    try:
        t0 = time.perf_counter()
        root = msrvtt_like(tmp/'msrvtt_like', a.videos)
        print(f"wrote {a.videos} synthetic 320x240 30 fps 15 s clips in {time.perf_counter() - t0:.0f} s")
        like = load_config('msrvtt-vitb32-amp', anno_dir=root, video_dir=root/'videos',
                           frame_cache=tmp/'cache_like', augment='none')
        run('MSR-VTT-like (synthetic)', like, a.workers, a.batch, a.passes)
        toy = load_config('toy', frame_cache=tmp/'cache_toy')
        ensure_data(toy)
        run('toy world', toy, a.workers, a.batch, a.passes)
    finally: shutil.rmtree(tmp, ignore_errors=True)
