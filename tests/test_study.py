"""The pieces the toy study (notebook 14) stands on: the world's validation split and oracle ceiling, the seqTransf
head (the fair base for GIM), and LIM's collapse gauge logged during training."""
import itertools
import json
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from glscl.config import load_config, SettingError
from glscl.data import MSRVTT_FILES
from glscl.toyworld import (make_toy_msrvtt, toy_events, read_toy, parse_caption, caption_holds, caption_matches,
                            oracle_ceiling, video_captions, random_events, TOY_VAL, WHEN_WORDS)
from glscl.losses import query_cosine
from glscl.model import GLSCL

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return make_toy_msrvtt(tmp_path_factory.mktemp('w')/'toy', n_videos=40, seed=5, n_test=15, n_val=8)

def test_val_split_is_disjoint_and_in_msrvtt_layout(world):
    train, val, test = (read_toy(world, s) for s in ('train', 'val', 'test'))
    tv, vv, sv = ({v for v, _ in x} for x in (train, val, test))
    assert len(tv) == 17 and len(vv) == 8 and len(sv) == 15 and not (tv & vv or tv & sv or vv & sv)
    data = json.loads((world/MSRVTT_FILES['data']).read_text())
    split = {v['video_id']: v['split'] for v in data['videos']}
    assert {split[v] for v in vv} == {'validate'} and {split[v] for v in sv} == {'test'}
    caps = {(s['video_id'], s['caption']) for s in data['sentences']}
    assert set(val) <= caps and len(val) == 8                     # one of each val video's captions
    assert (world/TOY_VAL).read_text().splitlines()[0] == 'key,vid_key,video_id,sentence'

def test_world_without_val_is_unchanged(tmp_path):
    "n_val=0 draws exactly the world of before (same files, same params): cached worlds stay valid."
    a = make_toy_msrvtt(tmp_path/'a', n_videos=12, seed=3)
    assert 'n_val' not in json.loads((a/'toy_events.json').read_text())['params'] and not (a/TOY_VAL).exists()
    with pytest.raises(FileNotFoundError, match='no validation split'): read_toy(a, 'val')
    with pytest.raises(ValueError, match='n_val'):
        make_toy_msrvtt(tmp_path/'b', n_videos=12, seed=3, n_test=2, n_val=10)

def test_study_presets_are_valid():
    for name in ('toy-study', 'toy-study-ci'):
        c = load_config(name)
        assert c.toy_val > 0 and c.toy_test >= 100 and c.toy_videos - c.toy_val - c.toy_test > 0
    assert load_config('toy-study').toy_test >= 1000
    with pytest.raises(SettingError, match='toy_val'): load_config('toy', toy_val=200, toy_test=40)

def slow_holds(caption, events):
    "Brute force: the caption's events, in the order and thirds it names, among the video's events."
    kinds = [(e.colour, e.shape, e.motion) for e in events]
    kind, when, named = parse_caption(caption)
    for pos in itertools.permutations(range(len(events)), len(named)):
        if [kinds[p] for p in pos] != named: continue
        if kind == 'pair' and pos[0] > pos[1]: continue
        if kind == 'when' and pos[0] * len(WHEN_WORDS) // len(events) != when: continue
        return True
    return False

def test_caption_semantics_against_brute_force():
    rng = np.random.default_rng(0)
    videos = [random_events(rng) for _ in range(60)]
    caps = [c for evs in videos[:20] for c in video_captions(evs, rng, 5)]
    seen = set()
    for c in caps:
        seen.add(parse_caption(c)[0])
        for evs in videos: assert caption_holds(c, evs) == slow_holds(c, evs), (c, evs)
    assert seen == {'event', 'when', 'pair'}

def test_oracle_ceiling_against_slow_count(world):
    evs = toy_events(world)
    test = read_toy(world, 'test')
    gallery = [v for v, _ in test]
    n = np.array([sum(slow_holds(c, evs[u]) for u in gallery) for _, c in test], float)
    assert [m for _, m in caption_matches(world, 'test')] == n.astype(int).tolist()
    o = oracle_ceiling(world, 'test')
    assert o['all']['R1'] == pytest.approx(100 * np.mean(1 / n), abs=1e-9)
    assert o['all']['R5'] == pytest.approx(100 * np.mean(np.minimum(5, n) / n), abs=1e-9)
    assert sum(o['share'].values()) == pytest.approx(1)
    for k in ('event', 'when', 'pair'):
        if k in o: assert 0 < o[k]['R1'] <= 100

def test_query_cosine_against_loop():
    q = F.normalize(torch.randn(3, 5, 7, dtype=torch.float64), dim=-1)
    loop = sum(float(q[b, i] @ q[b, j]) for b in range(3) for i in range(5) for j in range(5) if i != j) / (3 * 5 * 4)
    assert query_cosine(q).item() == pytest.approx(loop, rel=1e-12, abs=0)
    assert query_cosine(F.normalize(torch.ones(2, 4, 3), dim=-1)).item() == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match='2 queries'): query_cosine(torch.ones(2, 1, 3))

@pytest.fixture(scope='module')
def cfg():
    return load_config('toy', clip_pretrained='none', lim_dropout=0.0, freeze_visual=False, freeze_conv1=False)

def test_seqtransf_head_is_mean_pooling_after_the_temporal_transformer(cfg):
    torch.manual_seed(0)
    g = GLSCL(cfg).eval()
    s = GLSCL(cfg.replace(head='seqtransf'), encoder=g.clip).eval()
    assert s.lim is None and s.temporal is not None
    s.temporal.load_state_dict(g.temporal.state_dict())
    B, N = 3, 5
    ids = torch.randint(1, 49000, (B, 8)); ids[:, 0] = 49406; ids[:, 7] = 49407
    mask = torch.ones(B, 8, dtype=torch.bool)
    fm = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    frames = torch.randn(B, N, 3, 64, 64) * fm[..., None, None, None]
    with torch.no_grad():
        t, v = s.encode_text(ids, mask), s.encode_video(frames, fm)
        raw = g.clip.encode_frames(frames, fm).float()
        tt = g.temporal(raw, fm, zero_pads=True)                      # the same temporal transformer GLSCL uses
        S = s.similarity(t, v)
    assert 'query' not in t and 'query' not in v
    for a in range(B):
        for b in range(B):
            ref = F.cosine_similarity(t['eos'][a], tt[b][fm[b]].mean(0), dim=0)
            assert S[a, b].item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    out = s(dict(ids=ids, mask=mask, frames=frames, frame_mask=fm))
    out['loss'].backward()
    assert all(p.grad is not None for p in s.temporal.parameters()), 'seqTransf trains its temporal transformer'
    assert 'qcos_v' not in out and out['icl'] == 0

def test_forward_reports_query_collapse_gauges(cfg):
    torch.manual_seed(0)
    m = GLSCL(cfg).eval()
    B = 3
    ids = torch.randint(1, 49000, (B, 8)); ids[:, 0] = 49406; ids[:, 7] = 49407
    b = dict(ids=ids, mask=torch.ones(B, 8, dtype=torch.bool), frames=torch.randn(B, 4, 3, 64, 64),
             frame_mask=torch.ones(B, 4, dtype=torch.bool))
    out = m(b)
    with torch.no_grad():
        qt, qv = m.encode_text(b['ids'], b['mask'])['query'], m.encode_video(b['frames'], b['frame_mask'])['query']
    assert out['qcos_t'].item() == pytest.approx(query_cosine(qt).item(), rel=1e-5)
    assert out['qcos_v'].item() == pytest.approx(query_cosine(qv).item(), rel=1e-5)
    assert not out['qcos_v'].requires_grad

# --- the pinned tiny CLIP: every reader's study runs on the same weights ----------------------------------------------

def test_pin_round_trip_is_bit_exact(tmp_path):
    from glscl.tinyclip import pretrain_tiny_clip, pin_tiny_clip, unpin_tiny_clip
    short = dict(steps=3, batch_size=8, lr=1e-3, seed=2, n_frames=32)
    sd = pretrain_tiny_clip(**short, progress=False)
    p = pin_tiny_clip(sd, tmp_path/'p.safetensors', short)
    rt = unpin_tiny_clip(p, short)
    assert set(rt) == {k for k, v in sd.items() if torch.is_tensor(v)} and all(torch.equal(rt[k], sd[k]) for k in rt)
    from safetensors import safe_open
    with safe_open(str(p), 'pt') as f: stored = f.get_slice('token_rows').get_shape()[0]
    assert 0 < stored < 2000, 'only the rows of caption words are stored'
    with pytest.raises(ValueError, match='another recipe'): unpin_tiny_clip(p, dict(short, seed=3))

def test_the_pinned_weights_are_this_recipes_and_serve_the_cache(tmp_path):
    from glscl.tinyclip import pinned_tiny_clip, unpin_tiny_clip, tiny_clip_checkpoint, _recipe
    p = pinned_tiny_clip()
    assert p is not None and p.stat().st_size < 8 * 2**20, 'glscl ships its tiny CLIP (glscl/assets)'
    sd = unpin_tiny_clip(p)                                  # refuses a file of another recipe
    ck = torch.load(tiny_clip_checkpoint(tmp_path/'t.pt'), weights_only=True)
    assert ck['glscl_recipe'] == _recipe() and all(torch.equal(ck[k], sd[k]) for k in sd)
    assert sd['token_embedding.weight'].shape == (49408, 128) and all(torch.isfinite(v).all() for v in sd.values())

def test_building_the_tiny_clip_cache_leaves_the_random_state_alone(tmp_path):
    "A model seeded and built in a fresh clone (no cache yet) gets the same initial weights as with the cache."
    from glscl.tinyclip import tiny_clip_checkpoint
    torch.manual_seed(7); before = torch.get_rng_state()
    tiny_clip_checkpoint(tmp_path/'t.pt')                    # unpacking replays the recipe's seeded initialisation
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7); tiny_clip_checkpoint(tmp_path/'t.pt'); cached = torch.get_rng_state()   # from the cache
    assert torch.equal(cached, before)

def test_compare_on_a_subset_of_queries():
    "The study's by-kind comparisons: t2v on some queries, each ranked against every video; v2t not reported."
    from glscl.metrics import compare, metric_interval, retrieval_ranks
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(60, 60, generator=g), torch.randn(60, 60, generator=g) + 10 * torch.eye(60)
    q = [2, 3, 11, 17, 40, 41, 59]
    r = compare(a, b, queries=q, n_boot=300)
    assert list(r) == ['t2v']
    ranks = lambda s: retrieval_ranks(s[q], torch.tensor(q)).double()
    for k in (1, 5, 10):
        assert r['t2v'][f'R{k}']['b'] == pytest.approx(100 * (ranks(b) <= k).double().mean().item(), abs=1e-9)
    assert r['t2v']['MnR']['a'] == pytest.approx(ranks(a).mean().item(), abs=1e-9)
    assert r['t2v']['R1']['verdict'] == 'worse'                       # b has its targets boosted
    assert list(metric_interval([a, b], queries=q, n_boot=50)) == ['t2v']
