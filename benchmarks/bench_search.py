"""Search at scale, side by side in one run: the exhaustive scan and the two-stage search (a FAISS shortlist, then the
exact GLSCL re-rank from an int8 store), on generated encodings with CLIP-like cluster structure
(glscl.shortlist.clustered_world: its statistics are printed beside those of the trained toy checkpoint's test
encodings when runs/toy/last.pt exists), D 512, 12 frames, K 8, captions of the same world.

    OMP_NUM_THREADS=1 python benchmarks/bench_search.py [--videos 100000 300000 1000000] [--queries 1000]

For each size: the store (int8 codes + float16 scales and Gram matrices, memory-mapped .npy) and the shortlist (IVF-PQ,
trained on a fixed sample, filled block by block, saved with its sidecar and loaded memory-mapped) are built while the
encodings are generated; GLSCL's exhaustive ranking of every query (Sim1 + 0.5 Sim2 in float32, glscl.gim /
glscl.lim, block by block) is the reference. Recall@1 is the share of queries whose top video is GLSCL's top video;
recall@10 the share of GLSCL's top 10 in the returned top 10. Latency: one query at a time (shortlist + re-rank, the
text already encoded) and batches of 64 (per query). Peak memory: the process's peak resident set during the queries
(reset before them; memory-mapped pages read count). At the first size it also compares the kinds of shortlist vector
(exact flat indices), FAISS index types, and float16 / int8 stores against float32 (max score error, recall@10 of
an exhaustive scan of the store).
"""
import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from glscl.heads import GLSCLSimilarity
from glscl.index import store_arrays
from glscl.search import rerank, score_index
from glscl.shortlist import (Shortlist, shortlist_vectors, query_vectors, clustered_world, clustered_videos,
                             clustered_texts, encoding_stats, CLUSTER_BLOCK, KINDS, default_factory)

LAMBDA, TEMP = 0.5, 3.0
exact = GLSCLSimilarity(TEMP, LAMBDA)          # the model's head: S = Sim1 + lambda Sim2 (glscl.heads)
one = exact.one_query

def rss(field='VmHWM') -> float:
    for line in open('/proc/self/status'):
        if line.startswith(field): return int(line.split()[1]) / 2 ** 20
    return float('nan')

def reset_peak():
    try: open('/proc/self/clear_refs', 'w').write('5')
    except OSError: pass

def topk_merge(vals, idx, s, offset, k):
    v, i = torch.cat([vals, s], 1), torch.cat([idx, torch.arange(offset, offset + s.shape[1]).expand(len(s), -1)], 1)
    t = v.topk(k, 1)
    return t.values, i.gather(1, t.indices)

def recall(got, ref, k):
    return (float(np.mean([len(set(g[:k]) & set(r[:k])) / k for g, r in zip(got, ref, strict=True)])) if k > 1
            else float(np.mean([g[0] == r[0] for g, r in zip(got, ref, strict=True)])))

def fit_check():
    ck = Path(__file__).resolve().parents[1]/'runs/toy/last.pt'
    if not ck.is_file():
        print("(no runs/toy/last.pt: the generator's statistics are not checked against real toy encodings)"); return
    from glscl.train import model_from_checkpoint, encode_texts, encode_videos, split_items
    m = model_from_checkpoint(ck); c = m.cfg
    caps, ids, cv = split_items(c, c.test_split)
    real = encoding_stats(encode_texts(m, caps, c, progress=False), encode_videos(m, ids, c, progress=False), cv)
    w = clustered_world(2000)
    gen = encoding_stats(clustered_texts(w, np.arange(1000)), clustered_videos(w, 0, 2000), np.arange(1000))
    print(f"generator check: statistics of the toy checkpoint's test encodings ({len(caps)} captions, {len(ids)} "
          f"videos, D {m.clip.embed_dim}) beside the generator's (1,000 captions, 2,000 videos, D 512; R1 depends on "
          "the number of videos)")
    for k in real: print(f"  {k:<18}{real[k]:>9.3f}{gen[k]:>9.3f}")

KIND = 'frames'     # the shortlist's vectors: every frame (measured against the mean and mean+query at the first size)

def build(V, Q, folder, nprobe, factory, with_f16=False, keep_exact=0, train_rows=16384, kinds_check=False):
    w = clustered_world(V, seed=0)
    qrows = np.random.default_rng(7).choice(V, Q, replace=False)
    txt = clustered_texts(w, qrows)
    T = {k: torch.from_numpy(v) for k, v in txt.items()}
    N, K, D = w['n_frames'], w['n_queries'], w['dim']
    dts = ['int8'] + (['float16'] if with_f16 else [])
    shapes = dict(frames=(V, N, D), query=(V, K, D), frames_scale=(V, N), query_scale=(V, K),
                  mask=(V, N), gram=(V, N, N))
    stores = {}
    for dt in dts:
        (folder/dt).mkdir(parents=True, exist_ok=True)
        proto = store_arrays(clustered_videos(w, 0, 1), dt)
        stores[dt] = {k: np.lib.format.open_memmap(folder/dt/f'{k}.npy', 'w+',
                                                   proto[k].dtype, shapes[k]) for k in proto}
    vals, idx = torch.full((Q, 100), -1e9), torch.zeros((Q, 100), dtype=torch.long)
    S_keep = torch.zeros(keep_exact, V) if keep_exact else None
    t_train = t_add = t_gen = 0.0
    sample = clustered_videos(w, 0, min(V, train_rows))
    t0 = time.perf_counter()
    x, _ = shortlist_vectors(sample['frames'], sample['mask'], kind=KIND)
    sl = Shortlist.train(x, KIND, factory or default_factory(int(w['length'].sum()), D), n_frames=N)
    t_train = time.perf_counter() - t0
    kind_vecs = {k: [] for k in KINDS} if kinds_check else None
    del sample, x
    for j in range(0, V, CLUSTER_BLOCK):
        t0 = time.perf_counter(); b = clustered_videos(w, j, min(V, j + CLUSTER_BLOCK))
        t_gen += time.perf_counter() - t0
        bt = {k: torch.from_numpy(v) for k, v in b.items()}
        s = torch.cat([exact(T, bt) if Q <= 256
                       else torch.cat([exact({k: v[i:i + 256] for k, v in T.items()}, bt) for i in range(0, Q, 256)])])
        vals, idx = topk_merge(vals, idx, s, j, 100)
        if S_keep is not None: S_keep[:, j:j + len(s[0])] = s[:keep_exact]
        for dt in dts:
            for k, a in store_arrays(b, dt).items(): stores[dt][k][j:j + len(a)] = a
        t0 = time.perf_counter()
        x, ids = shortlist_vectors(b['frames'], b['mask'], kind=KIND); sl.add(x, ids + j * N, progress=False)
        t_add += time.perf_counter() - t0
        if kind_vecs is not None:
            for k in KINDS:
                xv, iv = shortlist_vectors(b['frames'], b['mask'], b['query'], k, LAMBDA)
                kind_vecs[k].append((xv, iv + (j * N if k == 'frames' else j)))
        if (j // CLUSTER_BLOCK) % 40 == 0:
            print(f"    {j + len(s[0]):,} / {V:,} videos, generation {t_gen:.0f} s, shortlist add {t_add:.0f} s",
                  flush=True)
    for dt in dts:
        for a in stores[dt].values(): a.flush()
    del stores; gc.collect()
    sl.save(folder/'shortlist.faiss')
    return dict(w=w, txt=txt, T=T, ref=idx.numpy(), t_train=t_train, t_add=t_add, t_gen=t_gen, S_keep=S_keep,
                kind_vecs=kind_vecs)

def open_store(folder):
    return {p.stem: np.load(p, mmap_mode='r') for p in folder.glob('*.npy')}

def search_all(sl, store, T, txt, C, batch=1):
    "Top-10 rows and per-query seconds of every query through shortlist + re-rank."
    Q, out, secs = len(txt['eos']), [], []
    for i in range(0, Q, batch):
        t0 = time.perf_counter()
        qv = query_vectors(txt['eos'][i:i + batch])
        cand = sl.candidates(qv, C)
        for r in range(len(cand)):
            t = {k: v[i + r:i + r + 1] for k, v in T.items()}
            s, rows = rerank(t, store, cand[r], one)
            out.append(rows[s.topk(min(10, len(s))).indices.numpy()])
        secs.append((time.perf_counter() - t0) / len(cand))
    return out, np.array(secs)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--videos', type=int, nargs='+', default=[100_000, 300_000, 1_000_000])
    ap.add_argument('--queries', type=int, default=1000)
    ap.add_argument('--candidates', type=int, nargs='+', default=[50, 100, 200, 400, 800])
    ap.add_argument('--nprobe', type=int, default=32)
    ap.add_argument('--factory', default=None, help='FAISS index (default: glscl.shortlist.default_factory)')
    ap.add_argument('--dir', default=None, help='where to write the stores (default: a temp folder)')
    ap.add_argument('--json', default=None, help='write the measured rows here (for the notebook figure)')
    ap.add_argument('--no-compare', action='store_true',
                    help='skip the first size\'s comparisons (kinds of vector, index types, stores)')
    a = ap.parse_args(argv)
    print(f"{torch.get_num_threads()} torch threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    fit_check()
    rows = []
    for n_i, V in enumerate(a.videos):
        root = Path(tempfile.mkdtemp(dir=a.dir, prefix=f'bench-search-{V}-'))
        try:
            first = n_i == 0
            t0 = time.perf_counter()
            first = first and not a.no_compare
            B = build(V, a.queries, root, a.nprobe, a.factory, with_f16=first,
                      keep_exact=min(200, a.queries) if first else 0, kinds_check=first)
            wall = time.perf_counter() - t0
            store = open_store(root/'int8')
            disk = sum(p.stat().st_size for p in (root/'int8').glob('*.npy')) + (root/'shortlist.faiss').stat().st_size
            sl = Shortlist.load(root/'shortlist.faiss').set_search(nprobe=a.nprobe)
            print(f"\n{V:,} videos: {sl}; generation {B['t_gen']:.0f} s; shortlist train {B['t_train']:.0f} s + add "
                  f"{B['t_add']:.0f} s; store + shortlist on disk {disk / 2**30:.2f} GB (shortlist "
                  f"{(root/'shortlist.faiss').stat().st_size / 2**20:.0f} MB); wall {wall:.0f} s")
            if first: compare_first(B, root, store, V, a)
            for C in a.candidates:
                reset_peak()
                got, s1 = search_all(sl, store, B['T'], B['txt'], C)
                peak = rss('VmHWM')
                _, s64 = search_all(sl, store, B['T'], B['txt'], C, batch=64)
                r = dict(videos=V, candidates=C, R1=recall(got, B['ref'], 1), R10=recall(got, B['ref'], 10),
                         p50=np.median(s1) * 1e3, p95=np.percentile(s1, 95) * 1e3, b64=np.median(s64) * 1e3,
                         build=B['t_train'] + B['t_add'], disk=disk / 2**30, peak=peak)
                rows.append(r)
                print(f"  C {C:>4}: recall@1 {r['R1']:.3f} recall@10 {r['R10']:.3f} p50 {r['p50']:.1f} ms p95 "
                      f"{r['p95']:.1f} ms batch-64 {r['b64']:.1f} ms/query peak {peak:.2f} GB", flush=True)
            print(f"  after the queries: resident {rss('VmRSS'):.2f} GB = anonymous {rss('RssAnon'):.2f} GB (the FAISS "
                  f"index, Python, torch) + file-backed {rss('RssFile'):.2f} GB (pages of the memory-mapped store and "
                  "libraries, page cache the kernel can drop)", flush=True)
            del store, sl, B; gc.collect()
        finally: shutil.rmtree(root, ignore_errors=True)
        table(rows, a)   # after every size: a partial run keeps what it measured
    return 0

def table(rows, a):
    print(f"\nshortlist (IVF-PQ fast-scan, nprobe {a.nprobe}, one vector per frame) + exact re-rank (int8 store), "
          f"{a.queries:,} queries, recall against GLSCL's exhaustive ranking")
    print(f"{'videos':>10}{'cand.':>7}{'R@1':>7}{'R@10':>7}{'p50 ms':>8}{'p95 ms':>8}{'b64 ms/q':>9}{'build s':>9}"
          f"{'disk GB':>9}{'peak GB':>9}")
    for r in rows:
        print(f"{r['videos']:>10,}{r['candidates']:>7}{r['R1']:>7.3f}{r['R10']:>7.3f}{r['p50']:>8.1f}{r['p95']:>8.1f}{r['b64']:>9.1f}{r['build']:>9.0f}{r['disk']:>9.2f}{r['peak']:>9.2f}")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    if a.json: Path(a.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0

def compare_first(B, root, store, V, a):
    "At the first size: the kinds of vector (flat, exact), FAISS index types, and the store's precision."
    import faiss
    ref, txt, T = B['ref'], B['txt'], B['T']
    print("  kinds of shortlist vector (exact flat inner product), recall@10 of GLSCL's top 10 among the candidates:")
    for k, parts in B['kind_vecs'].items():
        x = np.concatenate([p[0] for p in parts]); ids = np.concatenate([p[1] for p in parts])
        sl = Shortlist(faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1])),
                       dict(kind=k, n_frames=B['w']['n_frames'], factory='Flat', d=x.shape[1]))
        sl.index.add_with_ids(x, ids); del x
        qv = query_vectors(txt['eos'], txt['query'], k, LAMBDA)
        rec = [np.mean([len(set(c) & set(r[:10])) / 10 for c, r in zip(sl.candidates(qv, C), ref, strict=True)])
               for C in a.candidates]
        print(f"    {k:<11}" + ''.join(f"  C {C}: {r:.3f}" for C, r in zip(a.candidates, rec, strict=True)))
        del sl; gc.collect()
    parts = B['kind_vecs'][KIND]; x = np.concatenate([p[0] for p in parts]); ids = np.concatenate([p[1] for p in parts])
    B['kind_vecs'] = None
    qv = query_vectors(txt['eos'])
    print(f"  FAISS index types on the {len(x):,} frame vectors: build s, size MB, search ms/query (1 query, C 400), "
          f"candidate recall@10 at C = {a.candidates}")
    nl = default_factory(len(x), 512).split(',')[0]
    sub = ids < 10_000 * 12   # HNSW: the frames of the first 10,000 videos only (its build time)
    for fac, ps, m in ((default_factory(len(x), 512), dict(nprobe=a.nprobe), None),
                       (f"{nl},PQ64x4fs", dict(nprobe=a.nprobe), None),
                       (f"{nl},PQ128x4fs", dict(nprobe=4 * a.nprobe), None), ('HNSW32,Flat', dict(ef=256), sub)):
        xs, iv = (x, ids) if m is None else (x[m], ids[m])
        t0 = time.perf_counter(); sl = Shortlist.train(xs, KIND, fac, n_frames=12); sl.add(xs, iv, progress=False)
        bt = time.perf_counter() - t0
        sl.set_search(**ps); sl.save(root/'cmp.faiss'); mb = (root/'cmp.faiss').stat().st_size / 2**20
        t0 = time.perf_counter(); [sl.candidates(q[None], 400) for q in qv[:200]]
        ms = (time.perf_counter() - t0) / 200 * 1e3
        if m is None:
            rec = [np.mean([len(set(c) & set(r[:10])) / 10 for c, r in zip(sl.candidates(qv, C), ref, strict=True)])
                   for C in a.candidates]
            note = f"nprobe {ps['nprobe']}"
        else:   # against GLSCL's top 10 among the same 10,000 videos (200 queries)
            ref_sub = B['S_keep'][:, :10_000].topk(10).indices.numpy()
            rec = [np.mean([len(set(c) & set(r)) / 10
                            for c, r in zip(sl.candidates(qv[:len(ref_sub)], C), ref_sub, strict=True)])
                   for C in a.candidates]
            note = (f"efSearch {ps['ef']}; built on the {len(xs):,} frames of the first 10,000 videos, recall against "
                    "GLSCL's top 10 among them, 200 queries")
        print(f"    {fac:<20}{bt:>7.0f} s{mb:>8.0f} MB{ms:>7.2f} ms  " + '  '.join(f"{r:.3f}" for r in rec)
              + f"  ({note})", flush=True)
        del sl; gc.collect()
    del x
    S = B['S_keep']; ref200 = S.topk(10).indices.numpy()
    print(f"  stores against float32 (exhaustive scan of the store, {len(S)} queries): max |score error|, recall@1, "
          "recall@10; one-query exhaustive scan time")
    for dt in ('float16', 'int8'):
        st = open_store(root/dt)
        t2 = {k: v[:len(S)] for k, v in T.items()}
        Sd = score_index(exact, t2, st)
        got = Sd.topk(10).indices.numpy()
        t0 = time.perf_counter(); [score_index(one, {k: v[i:i + 1] for k, v in T.items()}, st) for i in range(3)]
        ms = (time.perf_counter() - t0) / 3
        print(f"    {dt:<8} max |dS| {float((Sd - S).abs().max()):.2e}  recall@1 {recall(got, ref200, 1):.3f}  "
              f"recall@10 {recall(got, ref200, 10):.3f}  size "
              f"{sum(p.stat().st_size for p in (root/dt).glob('*.npy')) / 2**30:.2f} GB  exhaustive one query {ms:.3f} "
              "s", flush=True)
        del st
    shutil.rmtree(root/'float16', ignore_errors=True)

if __name__ == '__main__':
    sys.exit(main())
