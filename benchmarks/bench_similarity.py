"""Side-by-side timing of GLSCL's similarity computations on random features (CPU or GPU).

(a) Sim1: `glscl.gim.global_interaction` (no pooled video is ever built) against the per-pair formulation that
    materialises every text-conditioned video v_{a|b}, with the bare (T x D)(D x V*N) score product as the floor.
(b) Sim1 + 0.5 Sim2 from cached query outputs (each text and each video decoded once, Sim2 one product) against
    the released evaluation's scheme, which re-runs the LIM decoder for every pair of blocks of 16 texts x 16 videos.
    On a CPU the released scheme at 1k x 1k (3,969 block pairs) takes many minutes: it is timed on a measured subset
    of its block pairs and scaled by their count (the benchmark says so), and compared with the cached scores there.
(c) A second evaluation that reads the per-item encodings from the on-disk cache against the first, which encodes
    every text and video with CLIP ViT-B/32 (random weights: the cost is the same). Encoding 1,000 videos of 12
    frames takes many minutes on a CPU: it is timed on a subset and scaled (said so). Then the same on the real
    `glscl.train.evaluate` path with the toy preset (tiny CLIP, toy test split), measured whole.

    python benchmarks/bench_similarity.py [--texts 1000 --videos 1000 --frames 12 --dim 512] [--quick]

Prints medians over a few rounds (torch.utils.benchmark, methods in turn: benchmarks/timing.py), the ratios, and the max
abs differences; exits 1 if an equality check fails.
"""
import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from glscl.gim import frame_weights, global_interaction
from glscl.lim import LocalInteraction, query_similarity
import timing


def interleaved(fns, repeats, device, min_run_time=0.1):
    """Median seconds per call of each of `fns` (a dict), timed in turn for `repeats` rounds by torch.utils.benchmark
    (`timing.interleaved`: it warms each up and synchronises `device` itself), so that a change in machine load hits
    all of them alike; returns ({name: seconds}, {name: last output})."""
    return timing.interleaved(fns, repeats, min_run_time)


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


def bench_heads(T, V, N, D, words, batch, pair_budget, repeats, device, g):
    lim = LocalInteraction(D, n_queries=8, n_layers=3, n_heads=8, ff_dim=4 * D).to(device).eval()
    tokens = (torch.randn(T, words, D, generator=g) / D ** 0.5 * 8).to(device)
    tmask = random_lengths(T, words, 5, g, device)
    eos = tokens[torch.arange(T, device=device), tmask.sum(1) - 1]           # the EOS token's feature
    frames = (torch.randn(V, N, D, generator=g) / D ** 0.5 * 8).to(device)
    fmask = random_lengths(V, N, max(1, N // 2), g, device)
    big = 256                                                                 # decode in batches of 256 items

    def cached():
        qt = torch.cat([lim(tokens[i:i + big], tmask[i:i + big], 'text') for i in range(0, T, big)])
        qv = torch.cat([lim(frames[j:j + big], fmask[j:j + big], 'video') for j in range(0, V, big)])
        return global_interaction(eos, frames, fmask) + 0.5 * query_similarity(qt, qv)

    pairs = [(i, j) for i in range(0, T, batch) for j in range(0, V, batch)]
    sub = pairs if len(pairs) <= pair_budget else [pairs[k] for k in
                                                    torch.randperm(len(pairs), generator=g)[:pair_budget].tolist()]

    def released_block(i, j):
        qt = lim(tokens[i:i + batch], tmask[i:i + batch], 'text')               # decoded again for every video block
        qv = lim(frames[j:j + batch], fmask[j:j + batch], 'video')              # decoded again for every text block
        return (global_interaction(eos[i:i + batch], frames[j:j + batch], fmask[j:j + batch])
                + 0.5 * query_similarity(qt, qv))

    def released_subset(): return [released_block(i, j) for i, j in sub]

    with torch.inference_mode():
        t, out = interleaved(dict(cached=cached, released_subset=released_subset), min(repeats, 2), device)
    S = out['cached']
    diff = max((S[i:i + batch, j:j + batch] - blk).abs().max().item()
               for (i, j), blk in zip(sub, out['released_subset'], strict=True))
    return dict(cached=t['cached'], released=t['released_subset'] * len(pairs) / len(sub), pairs=len(pairs),
                measured=len(sub), diff=diff)


def bench_cache(T, V, N, D, words, n_videos_timed, repeats, device, g, tmp):
    """First evaluation (CLIP ViT-B/32 encodes every item, then S) vs second (encodings read from the cache file, then
    S)."""
    import open_clip
    import logging
    from glscl.clip import ClipEncoder
    from glscl.filesafety import atomic_save
    logging.getLogger().setLevel(logging.ERROR)
    enc = ClipEncoder(open_clip.create_model('ViT-B-32', pretrained=None)).to(device).eval()
    lim = LocalInteraction(D, n_queries=8, n_layers=3, n_heads=8, ff_dim=4 * D).to(device).eval()
    nv = min(n_videos_timed, V)
    nt = min(4 * nv, T)
    ids = torch.randint(1, 49000, (nt, words), generator=g).to(device); ids[:, -1] = 49407
    pix = torch.randn(nv, N, 3, 224, 224, generator=g).to(device)
    def encode_subset():
        tok, eos = enc.encode_text(ids)
        f = enc.encode_frames(pix, None)
        return lim(tok.float(), None, 'text'), lim(f.float(), None, 'video')
    with torch.inference_mode():
        te, _ = interleaved(dict(encode=encode_subset), 1, device)
    # what the cache holds for T texts and V videos, and S from it
    text = dict(eos=torch.randn(T, D, generator=g), query=F.normalize(torch.randn(T, 8, D, generator=g), dim=-1))
    video = dict(frames=torch.randn(V, N, D, generator=g), mask=torch.ones(V, N, dtype=torch.bool),
                 query=F.normalize(torch.randn(V, 8, D, generator=g), dim=-1))
    path = Path(tmp)/'enc.pt'
    atomic_save(dict(parts={}, enc=dict(text=text, video=video)), path)
    def sim(t, v): return global_interaction(t['eos'].to(device), v['frames'].to(device), v['mask'].to(device)) \
                          + 0.5 * query_similarity(t['query'].to(device), v['query'].to(device))
    from glscl.train import model_fingerprint
    from glscl.filesafety import safe_load
    def second():                                                             # the key needs the weights' hash
        model_fingerprint(enc); model_fingerprint(lim)
        blob = safe_load(path, 'encoding cache')['enc']                   # as glscl.train.cached_encodings reads it
        return sim(blob['text'], blob['video'])
    with torch.inference_mode():
        ts, _ = interleaved(dict(s=lambda: sim(text, video), second=second), repeats, device)
    # encoding cost scaled from the timed subset: texts and videos in proportion
    t_text_video = te['encode']
    scale_v, scale_t = V / nv, T / nt
    with torch.inference_mode():
        tt, _ = interleaved(dict(text_only=lambda: lim(enc.encode_text(ids)[0].float(), None, 'text')), 1, device)
    encode_full = tt['text_only'] * scale_t + (t_text_video - tt['text_only']) * scale_v
    return dict(first=encode_full + ts['s'], second=ts['second'], s=ts['s'], encode=encode_full, nv=nv, nt=nt,
                size_mb=path.stat().st_size / 2 ** 20)


def bench_cache_toy():
    "The real path: glscl.train.evaluate on the toy preset twice, the second from the on-disk cache."
    import tempfile
    from glscl.config import load_config
    from glscl.presetdata import ensure_data
    from glscl.model import GLSCL
    from glscl.train import evaluate
    cfg = load_config('toy')
    ensure_data(cfg)
    model = GLSCL(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        a = evaluate(model, cfg, cache_dir=d, progress=False)
        b = evaluate(model, cfg, cache_dir=d, progress=False)
    assert (a['cached'], b['cached']) == (False, True)
    return dict(first=a['seconds'], second=b['seconds'], diff=(a['sim'] - b['sim']).abs().max().item(),
                shape=tuple(a['sim'].shape))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--texts', type=int, default=1000); ap.add_argument('--videos', type=int, default=1000)
    ap.add_argument('--frames', type=int, default=12); ap.add_argument('--dim', type=int, default=512)
    ap.add_argument('--words', type=int, default=32, help='token slots per caption, part (b)')
    ap.add_argument('--b-texts', type=int, default=None,
                    help='texts for part (b) (default: 500 on CPU, --texts on GPU)')
    ap.add_argument('--b-videos', type=int, default=None, help='videos for part (b) (default: like --b-texts)')
    ap.add_argument('--batch', type=int, default=16, help="the released evaluation's block size, part (b)")
    ap.add_argument('--pairs', type=int, default=120,
                    help='block pairs of the released scheme to time on a CPU, part (b)')
    ap.add_argument('--cache-videos', type=int, default=8, help='videos whose ViT-B/32 encoding is timed, part (c)')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--quick', action='store_true', help='small sizes everywhere (a smoke test)')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    torch.set_num_threads(threads)
    if a.quick: a.texts, a.videos, a.b_texts, a.b_videos = 200, 200, 200, 200
    bt = a.b_texts or a.texts
    bv = a.b_videos or a.videos
    g = torch.Generator().manual_seed(0)
    load = lambda: ' '.join(f'{x:.1f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'
    print(f"device {device} ({threads} CPU threads), torch {torch.__version__}; methods timed in turn by "
          f"torch.utils.benchmark (blocked_autorange), median of {a.repeats} rounds ({min(a.repeats, 2)} in (b), 1 for "
          f"the encoders in (c)); load average before: {load()}\n")

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

    budget = 10 ** 9 if device.type == 'cuda' else a.pairs
    r = bench_heads(bt, bv, a.frames, a.dim, a.words, a.batch, budget, a.repeats, device, g)
    print(f"\n(b) Sim1 + 0.5 Sim2 for {bt} texts ({a.words} tokens) x {bv} videos ({a.frames} frames), D={a.dim}, "
          f"LIM 8 queries x 3 layers, released blocks of {a.batch} x {a.batch}")
    if r['measured'] < r['pairs']:
        print(f"    (the released scheme was timed on {r['measured']} of its {r['pairs']} block pairs, drawn at "
              f"random, and scaled by {r['pairs'] / r['measured']:.1f}: each pair does the same work)")
    print(f"    {'method':<48}{'seconds':>10}")
    print(f"    {'cached: decode each text and video once':<48}{r['cached']:>10.3f}")
    print(f"    {'released: decode again per pair of 16-blocks':<48}{r['released']:>10.1f}")
    print(f"    speed-up of cached over released: {r['released'] / r['cached']:.1f}x; "
          f"max |difference| on the measured blocks = {r['diff']:.2e}")
    if r['diff'] >= 1e-4: ok = False; print("    FAIL: the two similarity matrices differ by >= 1e-4")

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        r = bench_cache(bt, bv, a.frames, a.dim, a.words, a.cache_videos, a.repeats, device, g, tmp)
    print(f"\n(c) evaluation of {bt} texts x {bv} videos ({a.frames} frames, 224 px), CLIP ViT-B/32 + LIM, then S")
    print(f"    (encoding timed on {r['nt']} texts and {r['nv']} videos and scaled to {bt} and {bv}: the cost is "
          "linear in them)")
    print(f"    {'method':<48}{'seconds':>10}")
    print(f"    {'first: encode every item, then S':<48}{r['first']:>10.1f}")
    print(
        f"    {'second: hash the weights, read the cache ({:.0f} MB), S'.format(r['size_mb']):<48}{r['second']:>10.2f}")
    print(f"    {'(S alone from encodings in memory)':<48}{r['s']:>10.2f}")
    print(f"    speed-up of the second evaluation over the first: {r['first'] / r['second']:.0f}x")
    if not a.quick:
        r = bench_cache_toy()
        print(f"    the real path, glscl.train.evaluate on the toy preset ({r['shape'][0]} x {r['shape'][1]}, tiny "
              f"CLIP), measured whole:\n    first {r['first']:.2f} s, second {r['second']:.2f} s: "
              f"{r['first'] / r['second']:.0f}x; max |difference| {r['diff']:.1e}")
        if r['diff'] != 0: ok = False; print("    FAIL: the cached evaluation differs")
    print(f"\nload average after: {load()} (a load above {threads} means other processes shared the cores: times are "
          "noisy)")
    print("equality checks:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
