"""One text query against a large synthetic video index (D 512, 12 frames, K 8 query outputs), memory-mapped from disk,
scored with GLSCL's similarity (Sim1 + 0.5 Sim2) by glscl.search.score_blocks, beside the floor: the bare
(1 x D)(D x V*N) score product over the same memory-mapped blocks.

    python benchmarks/bench_search.py [--videos 100000] [--dtype float16 float32] [--repeats 5]

Growth to 1M videos is extrapolated linearly from the measured size (the work and the bytes read are linear in V);
the script says so. The methods are timed in turn by torch.utils.benchmark (benchmarks/timing.py), `--repeats` rounds;
each one's first call warms it up (the first query after writing may read from disk), so the medians are from the page
cache.
"""
import argparse, os, sys, tempfile
from pathlib import Path
import numpy as np, torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved
from glscl.gim import global_interaction
from glscl.lim import query_similarity
from glscl.search import score_blocks, one_query_similarity, torch_blocks, SEARCH_BLOCK


def write_index(folder: Path, V: int, N: int, K: int, D: int, dtype, chunk: int = 10000):
    "Synthetic arrays as the index stores them (.npy, memory-mapped on reading)."
    g = np.random.default_rng(0)
    fr = np.lib.format.open_memmap(folder/'frames.npy', 'w+', dtype, (V, N, D))
    q = np.lib.format.open_memmap(folder/'query.npy', 'w+', dtype, (V, K, D))
    gr = np.lib.format.open_memmap(folder/'gram.npy', 'w+', dtype, (V, N, N))
    lengths = g.integers(N // 2, N + 1, V)
    mask = np.arange(N)[None] < lengths[:, None]
    np.save(folder/'mask.npy', mask)
    for j in range(0, V, chunk):
        n = min(chunk, V - j)
        f = (g.standard_normal((n, N, D), np.float32) * (8 / D ** 0.5)).astype(dtype)
        f[~mask[j:j + n]] = 0                                                  # padded slots hold zeros, as encode_video leaves them
        fr[j:j + n] = f
        f32 = f.astype(np.float32); gr[j:j + n] = (f32 @ f32.transpose(0, 2, 1)).astype(dtype)
        x = g.standard_normal((n, K, D), np.float32)
        q[j:j + n] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(dtype)
    fr.flush(); q.flush(); gr.flush(); del fr, q, gr
    return {k: np.load(folder/f'{k}.npy', mmap_mode='r') for k in ('frames', 'mask', 'gram', 'query')}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--videos', type=int, default=100_000); ap.add_argument('--frames', type=int, default=12)
    ap.add_argument('--queries', type=int, default=8); ap.add_argument('--dim', type=int, default=512)
    ap.add_argument('--dtype', nargs='+', default=['float16', 'float32']); ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--block', type=int, default=SEARCH_BLOCK); ap.add_argument('--dir', default=None, help='where to write the index (default: a temp folder)')
    a = ap.parse_args(argv)
    V, N, K, D = a.videos, a.frames, a.queries, a.dim
    g = torch.Generator().manual_seed(1)
    text = dict(eos=torch.randn(1, D, generator=g) * (8 / D ** 0.5), query=torch.nn.functional.normalize(torch.randn(1, K, D, generator=g), dim=-1))
    sim = lambda t, v: global_interaction(t['eos'], v['frames'], v['mask'], gram=v['gram']) + 0.5 * query_similarity(t['query'], v['query'])
    floor = lambda t, v: (v['frames'].flatten(0, 1) @ t['eos'][0])[None]
    print(f"{V:,} videos x {N} frames, D {D}, K {K}; one text query; {torch.get_num_threads()} threads; blocks of {a.block} videos; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'storage':<9}{'index size':>12}{'floor (bare product)':>22}{'one-query path':>16}{'ratio':>8}{'general path':>14}{'ratio':>8}{'1M, one-query (extrapolated)':>30}")
    for dt in a.dtype:
        with tempfile.TemporaryDirectory(dir=a.dir) as d:
            arrays = write_index(Path(d), V, N, K, D, np.dtype(dt))
            size = sum((Path(d)/f'{k}.npy').stat().st_size for k in arrays)
            fns = dict(floor=lambda: torch_blocks(floor, text, {k: arrays[k] for k in ('frames', 'mask')}, a.block),
                       fast=lambda: torch_blocks(lambda t, v: one_query_similarity(t, v, 3.0, 0.5), text, arrays, a.block),
                       search=lambda: score_blocks(sim, text, arrays, a.block))
            with torch.inference_mode():
                m, out = interleaved(fns, a.repeats)
                s, f = out['search'], out['fast']
                assert torch.allclose(s, f, atol=1e-4), f"the one-query path differs from the general one by {float((s - f).abs().max()):.2e}"
            print(f"{dt:<9}{size / 2**30:>10.2f} G{m['floor']:>20.3f} s{m['fast']:>14.3f} s{m['fast'] / m['floor']:>7.2f}x"
                  f"{m['search']:>12.3f} s{m['search'] / m['floor']:>7.2f}x{m['fast'] * 1_000_000 / V:>28.2f} s")
    print(f"(1M: the measured time x {1_000_000 // V} (linear in V); a 1M index is {1_000_000 // V} x the size above, which must fit the page cache to stay this fast)")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
