"""Side-by-side timing of GLSCL's similarity computations on random features (CPU or GPU).

(a) Sim1: `glscl.gim.global_interaction` (no pooled video is ever built) against the per-pair formulation that
    materialises every text-conditioned video v_{a|b}, with the bare (T x D)(D x V*N) score product as the floor.
(b) Sim1 + 0.5 Sim2 from cached query outputs (each text and each video decoded once, Sim2 one product) against
    the released evaluation's scheme, which re-runs the LIM decoder for every (text batch, video batch) pair.

    python benchmarks/bench_similarity.py [--texts 1000 --videos 1000 --frames 12 --dim 512] [--quick]

Prints medians over a few repeats, the ratios, and the max abs differences; exits 1 if an equality check fails.
"""
import argparse, os, statistics, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from glscl.gim import frame_weights, global_interaction
from glscl.lim import LocalInteraction, query_similarity


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def interleaved(fns, repeats, device):
    """Median wall time of each of `fns` (a dict), run in turn `repeats` times after one warm-up each, so that a
    change in machine load hits all of them alike; returns ({name: seconds}, {name: last output})."""
    outs = {k: f() for k, f in fns.items()}; sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter(); outs[k] = f(); sync(device); times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def per_pair_sim1(eos, frames, mask, temp=3.0, chunk=50):
    "The straightforward formulation: for each block of texts, build v [t, V, D] = sum_i w_i f_i, then the cosine."
    out = []
    for i in range(0, len(eos), chunk):
        e = eos[i:i + chunk]
        w = frame_weights(e, frames, mask, temp)
        v = torch.einsum('tvn,vnd->tvd', w, frames)
        out.append(F.cosine_similarity(e[:, None], v, dim=-1))
    return torch.cat(out)


def random_lengths(n, max_len, low, g, device):
    lengths = torch.randint(low, max_len + 1, (n,), generator=g)
    return (torch.arange(max_len)[None] < lengths[:, None]).to(device)


def bench_gim(T, V, N, D, repeats, device, g):
    eos = (torch.randn(T, D, generator=g) / D ** 0.5 * 8).to(device)
    frames = (torch.randn(V, N, D, generator=g) / D ** 0.5 * 8).to(device)
    mask = random_lengths(V, N, max(1, N // 2), g, device)
    flat = frames.flatten(0, 1)
    with torch.inference_mode():
        t, out = interleaved(dict(floor=lambda: eos @ flat.T, ours=lambda: global_interaction(eos, frames, mask),
                                  pair=lambda: per_pair_sim1(eos, frames, mask)), repeats, device)
    return dict(t, diff=(out['ours'] - out['pair']).abs().max().item())


def bench_heads(T, V, N, D, words, batch, repeats, device, g):
    lim = LocalInteraction(D, n_queries=8, n_layers=3, n_heads=8, ff_dim=4 * D).to(device).eval()
    tokens = (torch.randn(T, words, D, generator=g) / D ** 0.5 * 8).to(device)
    tmask = random_lengths(T, words, 5, g, device)
    eos = tokens[torch.arange(T, device=device), tmask.sum(1) - 1]           # the EOS token's feature
    frames = (torch.randn(V, N, D, generator=g) / D ** 0.5 * 8).to(device)
    fmask = random_lengths(V, N, max(1, N // 2), g, device)

    def cached():
        qt = torch.cat([lim(tokens[i:i + batch], tmask[i:i + batch], 'text') for i in range(0, T, batch)])
        qv = torch.cat([lim(frames[j:j + batch], fmask[j:j + batch], 'video') for j in range(0, V, batch)])
        return global_interaction(eos, frames, fmask) + 0.5 * query_similarity(qt, qv)

    def released():
        rows = []
        for i in range(0, T, batch):
            cols = []
            for j in range(0, V, batch):
                qt = lim(tokens[i:i + batch], tmask[i:i + batch], 'text')           # decoded again for every video batch
                qv = lim(frames[j:j + batch], fmask[j:j + batch], 'video')          # decoded again for every text batch
                cols.append(global_interaction(eos[i:i + batch], frames[j:j + batch], fmask[j:j + batch])
                            + 0.5 * query_similarity(qt, qv))
            rows.append(torch.cat(cols, 1))
        return torch.cat(rows)

    with torch.inference_mode():
        t, out = interleaved(dict(cached=cached, released=released), min(repeats, 2), device)
    return dict(t, diff=(out['cached'] - out['released']).abs().max().item())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--texts', type=int, default=1000); ap.add_argument('--videos', type=int, default=1000)
    ap.add_argument('--frames', type=int, default=12); ap.add_argument('--dim', type=int, default=512)
    ap.add_argument('--words', type=int, default=32, help='token slots per caption, part (b)')
    ap.add_argument('--b-texts', type=int, default=None, help='texts for part (b) (default: 500 on CPU, --texts on GPU)')
    ap.add_argument('--b-videos', type=int, default=None, help='videos for part (b) (default: like --b-texts)')
    ap.add_argument('--batch', type=int, default=100, help="the released evaluation's batch size, part (b)")
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--quick', action='store_true', help='small sizes everywhere (a smoke test)')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    torch.set_num_threads(threads)
    if a.quick: a.texts, a.videos, a.b_texts, a.b_videos = 200, 200, 200, 200
    bt = a.b_texts or (a.texts if device.type == 'cuda' else min(a.texts, 500))
    bv = a.b_videos or (a.videos if device.type == 'cuda' else min(a.videos, bt))
    g = torch.Generator().manual_seed(0)
    load = lambda: ' '.join(f'{x:.1f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'
    print(f"device {device} ({threads} CPU threads), torch {torch.__version__}; methods run in turn, median of "
          f"{a.repeats} runs ({min(a.repeats, 2)} in (b)) after a warm-up each; load average before: {load()}\n")

    ok = True
    r = bench_gim(a.texts, a.videos, a.frames, a.dim, a.repeats, device, g)
    print(f"(a) Sim1 for {a.texts} texts x {a.videos} videos x {a.frames} frames, D={a.dim}")
    print(f"    {'method':<48}{'seconds':>10}{'vs floor':>10}")
    print(f"    {'bare score product (T x D)(D x V*N): the floor':<48}{r['floor']:>10.4f}{1:>9.1f}x")
    print(f"    {'global_interaction (no pooled videos)':<48}{r['ours']:>10.4f}{r['ours'] / r['floor']:>9.1f}x")
    print(f"    {'per pair, builds every v_(a|b)':<48}{r['pair']:>10.4f}{r['pair'] / r['floor']:>9.1f}x")
    speedup = r['pair'] / r['ours']
    print(f"    speed-up of global_interaction over per pair: {speedup:.1f}x; max |difference| = {r['diff']:.2e}")
    if r['diff'] >= 1e-4: ok = False; print("    FAIL: the two Sim1 computations differ by >= 1e-4")
    if speedup < 10 and not a.quick: print("    NOTE: speed-up below 10x on this machine/run")

    r = bench_heads(bt, bv, a.frames, a.dim, a.words, a.batch, a.repeats, device, g)
    print(f"\n(b) Sim1 + 0.5 Sim2 for {bt} texts ({a.words} tokens) x {bv} videos ({a.frames} frames), D={a.dim}, "
          f"LIM 8 queries x 3 layers, eval batch {a.batch}")
    if (bt, bv) != (a.texts, a.videos):
        print(f"    (measured at {bt} x {bv}, not {a.texts} x {a.videos}: the released scheme is too slow on a CPU at full size."
              f"\n     Its decoder work grows as T*V/batch, so the ratio grows with the number of batches: "
              f"{a.videos // a.batch} video batches at full size vs {bv // a.batch} here.)")
    print(f"    {'method':<48}{'seconds':>10}")
    print(f"    {'cached: decode each text and video once':<48}{r['cached']:>10.3f}")
    print(f"    {'released: decode again per (text, video) batch':<48}{r['released']:>10.3f}")
    print(f"    speed-up of cached over released: {r['released'] / r['cached']:.1f}x; max |difference| = {r['diff']:.2e}")
    if r['diff'] >= 1e-4: ok = False; print("    FAIL: the two similarity matrices differ by >= 1e-4")
    print(f"\nload average after: {load()} (a load above {threads} means other processes shared the cores: times are noisy)")
    print("equality checks:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
