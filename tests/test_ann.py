"""The two-stage search (glscl.shortlist + glscl.search): a shortlist of every video is the exhaustive search; recall on
a clustered set is above a floor; incremental adds equal one build; a damaged or foreign FAISS file is refused; the int8
store and the zero-shot mode against slow references."""
import numpy as np
import pytest
import torch
from glscl.config import load_config
from glscl.presetdata import ensure_data
from glscl.gim import global_interaction
from glscl.lim import query_similarity
from glscl.model import GLSCL
from glscl.heads import GLSCLSimilarity, mean_pooling_similarity
from glscl.index import VideoIndex, store_arrays, float_block
from glscl.search import rerank, score_index, zero_shot_config, main      # and VideoIndex.search, .build_shortlist
from glscl.shortlist import (Shortlist, ShortlistDamaged, shortlist_vectors, query_vectors, quantize_int8,
                             dequantize_int8, clustered_world, clustered_videos, clustered_texts)
from glscl.train import split_items

one = GLSCLSimilarity(3.0, 0.5).one_query


@pytest.fixture(scope='module')
def clustered():
    """3,000 generated videos (D 128, 12 frames, K 8) in an int8 store, 60 captions, GLSCL's float32 scores as the
    reference."""
    w = clustered_world(3000, dim=128, seed=3)
    v = clustered_videos(w, 0, 3000)
    txt = clustered_texts(w, np.random.default_rng(0).choice(3000, 60, replace=False))
    T = {k: torch.from_numpy(x) for k, x in txt.items()}
    S = (global_interaction(T['eos'], torch.from_numpy(v['frames']), torch.from_numpy(v['mask']))
         + 0.5 * query_similarity(T['query'], torch.from_numpy(v['query'])))
    return dict(w=w, v=v, txt=txt, T=T, S=S, store=store_arrays(v, 'int8'))


def _sl(c, factory='IVF32,PQ32x4fs', kind='frames', parts=1, nprobe=4):
    x, ids = shortlist_vectors(c['v']['frames'], c['v']['mask'], c['v']['query'], kind)
    sl = Shortlist.train(x, kind, factory, n_frames=12)
    for p in np.array_split(np.arange(len(x)), parts): sl.add(x[p], ids[p], progress=False)
    return sl.set_search(nprobe=nprobe)


def test_shortlist_of_every_video_is_exhaustive(clustered):
    c = clustered
    sl = _sl(c)
    ex = score_index(one, {k: x[:1] for k, x in c['T'].items()}, c['store'], block=700)[0]
    for i in range(5):
        t = {k: x[i:i + 1] for k, x in c['T'].items()}
        cand = sl.candidates(query_vectors(c['txt']['eos'][i:i + 1]), 3000)[0]
        assert sorted(cand.tolist()) == list(range(3000))                 # every video, once
        s, rows = rerank(t, c['store'], cand, one)
        full = score_index(one, t, c['store'])[0]
        torch.testing.assert_close(s, full[rows], atol=1e-6, rtol=1e-6)
        assert torch.equal(torch.from_numpy(rows)[s.topk(10).indices], full.topk(10).indices)
    torch.testing.assert_close(ex, score_index(one, {k: x[:1] for k, x in c['T'].items()}, c['store'])[0],
                               atol=1e-6, rtol=1e-6)


RECALL_FLOOR = 0.95  # recall@10 of GLSCL's float32 top 10: 200 candidates from IVF32,PQ32x4fs (nprobe 8) on per-frame
                     # vectors, int8 re-rank

def test_recall_above_floor(clustered):
    c = clustered
    sl = _sl(c, nprobe=8)
    ref = c['S'].topk(10).indices.numpy()
    got = []
    for i in range(len(ref)):
        t = {k: x[i:i + 1] for k, x in c['T'].items()}
        s, rows = rerank(t, c['store'], sl.candidates(query_vectors(c['txt']['eos'][i:i + 1]), 200)[0], one)
        got.append(rows[s.topk(10).indices.numpy()])
    r10 = np.mean([len(set(g) & set(r)) / 10 for g, r in zip(got, ref, strict=True)])
    assert r10 >= RECALL_FLOOR, r10
    mean = _sl(c, kind='mean', factory='Flat')   # the mean vector proposes worse candidates (why frames)
    cand = mean.candidates(query_vectors(c['txt']['eos']), 50)
    assert np.mean([len(set(a) & set(r)) / 10 for a, r in zip(cand, ref, strict=True)]) < r10


def test_incremental_adds_equal_one_build(clustered):
    c = clustered
    q = query_vectors(c['txt']['eos'])
    np.testing.assert_array_equal(_sl(c, parts=1).candidates(q, 40), _sl(c, parts=4).candidates(q, 40))


def test_vectors_and_int8_against_references(clustered):
    v = clustered['v']
    x, ids = shortlist_vectors(v['frames'][:4], v['mask'][:4], kind='frames')
    ref = [(r * 12 + s, v['frames'][r, s] / np.linalg.norm(v['frames'][r, s])) for r in range(4) for s in range(12)
           if v['mask'][r, s]]
    np.testing.assert_array_equal(ids, [i for i, _ in ref])
    np.testing.assert_allclose(x, np.stack([f for _, f in ref]), atol=1e-6)
    f, m, qv = (torch.from_numpy(v[k][:50]) for k in ('frames', 'mask', 'query'))
    t, tq = clustered['T']['eos'][:3], clustered['T']['query'][:3]
    xm, _ = shortlist_vectors(f, m, qv, 'mean+query', 0.5)
    torch.testing.assert_close(torch.from_numpy(query_vectors(t, tq, 'mean+query', 0.5) @ xm.T),
                               mean_pooling_similarity(t, f, m) + 0.5 * query_similarity(tq, qv), atol=1e-5, rtol=1e-5)
    codes, scale = quantize_int8(v['frames'][:20])
    for r in range(20):                                                 # one row at a time, as written on paper
        for s_ in range(12):
            row = v['frames'][r, s_].astype(np.float64)
            st = np.float64(np.float16(np.abs(row).max() / 127)) if np.abs(row).max() > 0 else 1.0
            np.testing.assert_array_equal(codes[r, s_], np.clip(np.rint(row / np.float32(st)), -127, 127))
            assert np.abs(dequantize_int8(codes[r, s_], scale[r, s_]) - row).max() <= st / 2 + 1e-6
    st = store_arrays(dict(frames=v['frames'][:5], mask=v['mask'][:5], query=v['query'][:5]), 'int8')
    fb = float_block(st, slice(0, 5))
    torch.testing.assert_close(torch.from_numpy(st['gram'].astype(np.float32)),
                               (fb['frames'] @ fb['frames'].transpose(1, 2)).half().float())


def _damage(tmp_path, sl):
    p = tmp_path/'s.faiss'
    sl.save(p)
    return p, p.read_bytes()

def test_refuses_damaged_or_foreign_faiss(clustered, tmp_path):
    import faiss
    sl = _sl(clustered)
    p, raw = _damage(tmp_path, sl)
    assert Shortlist.load(p).candidates(query_vectors(clustered['txt']['eos'][:2]), 5).shape == (2, 5)
    p.write_bytes(raw[:5000] + bytes([raw[5000] ^ 1]) + raw[5001:])
    with pytest.raises(ShortlistDamaged, match=f"{p}: its checksum differs.*rebuild it"): Shortlist.load(p)
    p.write_bytes(raw[:-10])
    with pytest.raises(ShortlistDamaged, match='bytes, its sidecar says'): Shortlist.load(p)
    p.write_bytes(b'\x80\x04' + raw[2:])   # a pickle header where FAISS's is: refused before any reader
    with pytest.raises(ShortlistDamaged, match='not the FAISS index header'): Shortlist.load(p)
    foreign = tmp_path/'foreign.faiss'
    faiss.write_index(faiss.IndexFlatIP(8), str(foreign))               # a FAISS file glscl did not write: no sidecar
    with pytest.raises(ShortlistDamaged, match=f"sidecar {foreign}.json is missing"): Shortlist.load(foreign)
    (tmp_path/'foreign.faiss.json').write_text('{"format": "something-else"}')
    with pytest.raises(ShortlistDamaged, match='is not a glscl-shortlist-1 sidecar'): Shortlist.load(foreign)
    (tmp_path/'foreign.faiss.json').write_text('not json')
    with pytest.raises(ShortlistDamaged, match='is not JSON'): Shortlist.load(foreign)
    with pytest.raises(FileNotFoundError, match='no shortlist'): Shortlist.load(tmp_path/'none.faiss')


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    cfg = load_config('toy')
    root = ensure_data(cfg)
    torch.manual_seed(cfg.seed)
    model = GLSCL(cfg).eval()
    captions, ids, cv = split_items(cfg, cfg.test_split)
    folder = tmp_path_factory.mktemp('videos')
    for v in ids[:10]: (folder/f'{v}.mp4').symlink_to((root/'videos'/f'{v}.mp4').resolve())
    return dict(cfg=cfg, model=model, folder=folder, ids=ids[:10],
                captions=[c for c, j in zip(captions, cv, strict=True) if j < 10], root=root)


def test_index_paths_agree_and_carry_the_shortlist(toy, tmp_path):
    m, folder = toy['model'], toy['folder']
    part = tmp_path/'part'; part.mkdir()
    files = sorted(p.name for p in folder.iterdir())
    for f in files[:6]: (part/f).symlink_to((folder/f).resolve())
    idx = VideoIndex.build(part, m, tmp_path/'i', dtype='int8', progress=False)
    idx.build_shortlist(factory='Flat', progress=False)
    assert idx.shortlist is not None and len(idx.shortlist) == int(np.asarray(idx.arrays['mask']).sum())
    for f in files[6:]: (part/f).symlink_to((folder/f).resolve())
    assert idx.update(progress=False)['added'] == 4   # the shortlist gets the new videos' frames, no training
    fresh = VideoIndex.build(part, m, tmp_path/'j', dtype='int8', progress=False)
    fresh.build_shortlist(factory='Flat', progress=False)
    again = VideoIndex.load(tmp_path/'i', m)
    assert len(again.shortlist) == len(fresh.shortlist)
    for q in toy['captions'][:4]:
        a, b = again.search(q, 5, candidates=10, path='shortlist'), fresh.search(q, 5, candidates=10, path='shortlist')
        ex = again.search(q, 5, path='exhaustive')
        assert again.last['path'] == 'exhaustive'
        assert [h['file'] for h in a] == [h['file'] for h in b] == [h['file'] for h in ex]
        torch.testing.assert_close(torch.tensor([h['score'] for h in a]), torch.tensor([h['score'] for h in ex]),
                                   atol=1e-6, rtol=0)
    f32 = VideoIndex.build(part, m, tmp_path/'k', progress=False)        # int8 against float32: close scores
    torch.testing.assert_close(again.scores(toy['captions'][:3]), f32.scores(toy['captions'][:3]), atol=0.02, rtol=0)
    sl = next((tmp_path/'i').glob('gen-*'))/'shortlist.faiss'
    raw = sl.read_bytes(); sl.write_bytes(raw[:200] + bytes([raw[200] ^ 0xff]) + raw[201:])
    with pytest.raises(ShortlistDamaged, match=str(sl)): VideoIndex.load(tmp_path/'i', m)
    with pytest.raises(ValueError, match='has no shortlist'): f32.search(toy['captions'][0], path='shortlist')


def test_zero_shot(toy, tmp_path, capsys):
    cfg = zero_shot_config('toy')
    model = GLSCL(cfg).eval()
    assert model.temporal is None and model.lim is None and not cfg.sim_lambda
    idx = VideoIndex.build(toy['folder'], model, tmp_path/'z', progress=False)
    assert 'query' not in idx.arrays
    from glscl.train import encode_texts, encode_videos
    order = [idx.files.index(f'{v}.mp4') for v in toy['ids']]
    t = encode_texts(model, toy['captions'], cfg, progress=False)
    f = torch.from_numpy(np.asarray(idx.arrays['frames']))[order]
    mk = torch.from_numpy(np.asarray(idx.arrays['mask']))[order]
    px, pm = torch.rand(2, 3, 3,
                        cfg.image_size, cfg.image_size), torch.tensor([[True, True, False], [True, False, False]])
    # CLIP's frame features as they are
    torch.testing.assert_close(model.encode_video(px, pm)['frames'], model.frame_tower(px, pm)['frames'])
    ev = encode_videos(model, toy['ids'], cfg, progress=False)
    torch.testing.assert_close(f[:, :ev['frames'].shape[1]], ev['frames'], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(idx.scores(toy['captions'])[:, order],
                               global_interaction(t['eos'], f, mk, temp=cfg.gim_temp), atol=1e-5, rtol=1e-5)
    assert main(['--index', str(tmp_path/'z'), '--zero-shot', '--preset', 'toy', '-k', '2', toy['captions'][0]]) == 0
    assert 'answered by the exhaustive path' in capsys.readouterr().out
    assert main(['--index', str(tmp_path/'z2'), '--build', str(toy['folder']), '--zero-shot', '--candidates', '5',
                 '--dtype', 'int8', '--preset', 'toy', '--quiet', toy['captions'][0]]) == 0
    assert 'answered by the shortlist path: 5 of 10 videos' in capsys.readouterr().out
