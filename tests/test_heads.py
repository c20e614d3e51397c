"""The similarity is written once (glscl.heads): the model, evaluation, search and the efficiency study all score
through it, so one set of encodings gives them identical matrices; each head against a slow loop written here."""
import pytest
import torch
from glscl.config import load_config
from glscl.model import GLSCL
from glscl.evaluation import block_similarity
from glscl.index import store_arrays, float_block
from glscl.search import score_index
from glscl.efficiency import GLSCLHead, make_heads
from glscl.heads import (SimilarityHead, MeanPooling, GLSCLSimilarity, similarity_head, score_blocks, frame_mean,
                         mean_pooling_similarity)


def encodings(D, T=11, V=13, N=12, L=7, seed=0):
    "Random cached encodings with padded words and frames (padding zero in the frames, as the encoders leave it)."
    g = torch.Generator().manual_seed(seed)
    tm = torch.arange(L)[None] < torch.randint(2, L + 1, (T, 1), generator=g)
    fm = torch.arange(N)[None] < torch.randint(1, N + 1, (V, 1), generator=g)
    text = dict(eos=torch.randn(T, D, generator=g), tokens=torch.randn(T, L, D, generator=g), mask=tm)
    video = dict(frames=torch.randn(V, N, D, generator=g).masked_fill(~fm[..., None], 0), mask=fm)
    return text, video


def naive(text, video, temp, lam, mean=False):
    "S [T, V] one pair at a time: GIM's pooled video (or the mean of the real frames), its cosine, plus lambda Sim2."
    S = torch.zeros(len(text['eos']), len(video['frames']), dtype=torch.float64)
    for a, t in enumerate(text['eos'].double()):
        for b, (f, m) in enumerate(zip(video['frames'].double(), video['mask'], strict=True)):
            f = f[m]
            w = torch.full((len(f),), 1 / len(f), dtype=torch.float64) if mean else torch.softmax(f @ t / temp, 0)
            v = (w[:, None] * f).sum(0)
            S[a, b] = t @ v / (t.norm() * v.norm())
            if lam: S[a, b] += lam * sum(text['query'][a, k].double() @ video['query'][b, k].double()
                                         for k in range(text['query'].shape[1])) / text['query'].shape[1]
    return S


@pytest.fixture(scope='module')
def toy():
    torch.manual_seed(0)
    cfg = load_config('toy')
    model = GLSCL(cfg).eval()
    text, video = encodings(model.clip.embed_dim, N=cfg.max_frames)
    with torch.no_grad(): tq, vq = model.add_queries(text, 'text'), model.add_queries(video, 'video')
    return dict(cfg=cfg, model=model, text=text, video=video, tq=tq, vq=vq)


def test_four_callers_one_matrix(toy):
    """GLSCL.similarity, evaluation's blocked scoring, search's index scoring and the efficiency study's GLSCL head
    (which decodes the query outputs itself, with the model's LIM weights) give the same matrix, bit for bit, at
    their default block sizes."""
    cfg, model, tq, vq = toy['cfg'], toy['model'], toy['tq'], toy['vq']
    eff = GLSCLHead(model.clip.embed_dim, cfg.n_queries, cfg.lim_layers, cfg.lim_heads, cfg.lim_ff_dim,
                    sim_lambda=cfg.sim_lambda, temp=cfg.gim_temp).eval()
    eff.lim.load_state_dict(model.lim.state_dict())
    with torch.no_grad():
        S = model.similarity(tq, vq)
        got = dict(evaluation=block_similarity(model, tq, vq),
                   search=score_index(similarity_head(cfg), tq, store_arrays(vq, 'float32')),
                   efficiency=eff(toy['text'], toy['video']),
                   head=similarity_head(cfg)(tq, vq))
    assert S.shape == (11, 13) and torch.isfinite(S).all()
    for who, s in got.items(): assert torch.equal(s, S), (who, (s - S).abs().max())
    torch.testing.assert_close(S.double(), naive(tq, vq, cfg.gim_temp, cfg.sim_lambda), atol=1e-5, rtol=1e-5)


def test_other_blocks_agree_to_rounding(toy):
    """Other block sizes give the same numbers up to float rounding, not always bit for bit: BLAS picks other kernels
    for other shapes (a block of one text is a matrix-vector product)."""
    cfg, model, tq, vq = toy['cfg'], toy['model'], toy['tq'], toy['vq']
    with torch.no_grad():
        S = model.similarity(tq, vq)
        for b in (1, 3, 4):
            torch.testing.assert_close(block_similarity(model, tq, vq, block=b), S, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(score_index(similarity_head(cfg), tq, store_arrays(vq, 'float32'), block=b), S,
                                       atol=1e-6, rtol=1e-6)


def test_one_query_equals_forward(toy):
    "Search's one-text path (stored Gram matrices, matrix-vector products) against the head's forward, text by text."
    cfg, tq, vq = toy['cfg'], toy['tq'], toy['vq']
    head = similarity_head(cfg)
    stored = float_block(store_arrays(vq, 'float32'), slice(None))
    assert 'gram' in stored
    S = head(tq, vq)
    for a in range(len(tq['eos'])):
        one = {k: x[a:a + 1] for k, x in tq.items()}
        torch.testing.assert_close(head.one_query(one, stored), S[a:a + 1], atol=1e-5, rtol=1e-5)
    # without Gram matrices, with several texts, or with the released padding, one_query is forward itself
    assert torch.equal(head.one_query(tq, stored), head(tq, stored))
    one = {k: x[:1] for k, x in tq.items()}
    assert torch.equal(head.one_query(one, vq), head(one, vq))
    rel = similarity_head(cfg.replace(official_compat=True))
    assert torch.equal(rel.one_query(one, stored), rel(one, stored))


@pytest.mark.parametrize('lam', [0.0, 0.5, 1.7])
def test_glscl_head_against_a_loop(lam):
    text, video = encodings(16, T=4, V=5, N=6, L=3, seed=1)
    g = torch.Generator().manual_seed(2)
    text['query'], video['query'] = torch.randn(4, 3, 16, generator=g), torch.randn(5, 3, 16, generator=g)
    video['frames'] = torch.where(video['mask'][..., None], video['frames'], torch.full((), 1e4))   # junk on padding
    got = GLSCLSimilarity(temp=0.7, sim_lambda=lam)(text, video)
    torch.testing.assert_close(got.double(), naive(text, video, 0.7, lam), atol=1e-5, rtol=1e-5)


def test_mean_pooling_against_a_loop_and_the_efficiency_study():
    text, video = encodings(16, T=4, V=5, N=6, L=3, seed=3)
    inf = torch.full((), float('inf'))
    video['frames'] = torch.where(video['mask'][..., None], video['frames'], inf)   # padding is never read
    ref = naive(text, video, 1.0, 0, mean=True)
    torch.testing.assert_close(MeanPooling()(text, video).double(), ref, atol=1e-5, rtol=1e-5)
    mp = mean_pooling_similarity(text['eos'], video['frames'], video['mask'])
    torch.testing.assert_close(mp.double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(make_heads(16)['CLIP4Clip (meanP)'](text, video), MeanPooling()(text, video))
    m = video['mask']
    want = torch.stack([video['frames'][b][m[b]].mean(0) for b in range(len(m))])
    torch.testing.assert_close(frame_mean(video['frames'], m), want)


def test_the_config_chooses_the_head(toy):
    cfg = toy['cfg']
    for h in ('meanp', 'seqtransf'): assert type(similarity_head(cfg.replace(head=h))) is MeanPooling
    h = similarity_head(cfg, use_lim=False, chunk_size=3)
    assert (h.temp, h.sim_lambda, h.official_compat, h.chunk_size) == (cfg.gim_temp, 0.0, cfg.official_compat, 3)
    with torch.no_grad():
        assert torch.equal(toy['model'].similarity(toy['tq'], toy['vq'], use_lim=False), h(toy['text'], toy['video']))


def test_frame_weights():
    text, video = encodings(8, T=3, V=4, N=5, L=2, seed=4)
    m = video['mask']
    w = MeanPooling().frame_weights(text, video)
    assert w.shape == (3, 4, 5)
    torch.testing.assert_close(w[1, 2][m[2]], torch.full((int(m[2].sum()),), 1 / int(m[2].sum())))
    assert (w[:, ~m] == 0).all()
    w = GLSCLSimilarity(temp=0.5).frame_weights(text, video)
    for a in range(3):
        for b in range(4):
            torch.testing.assert_close(w[a, b][m[b]], torch.softmax(video['frames'][b][m[b]] @ text['eos'][a] / 0.5, 0))
    assert (w[:, ~m] == 0).all()


def test_errors_and_blocks():
    text, video = encodings(8, T=3, V=7, N=5, L=2, seed=5)
    with pytest.raises(ValueError, match="query outputs"): GLSCLSimilarity(sim_lambda=0.5)(text, video)
    with pytest.raises(NotImplementedError, match='must define forward'): SimilarityHead()(text, video)
    with pytest.raises(ValueError, match='no video block'): score_blocks(MeanPooling(), text, [])
    head = GLSCLSimilarity(sim_lambda=0)
    parts = [{k: x[j:j + 3] for k, x in video.items()} for j in range(0, 7, 3)]
    torch.testing.assert_close(score_blocks(head, text, parts), head(text, video), atol=1e-6, rtol=1e-6)
