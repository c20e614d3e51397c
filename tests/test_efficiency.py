"glscl.efficiency: each baseline head against a slow per-pair loop written here, the FLOP counts, the growth fit."
import math
import pytest
import torch
import torch.nn.functional as F
from glscl.efficiency import (XPoolHead, XCLIPHead, GLSCLHead, make_heads, random_features,
                              count_flops, flop_model, flops_at, gim_flops, fit_growth, efficiency_table, format_table,
                              attention_over_similarities, main)
from glscl.gim import global_interaction
from glscl.heads import MeanPooling as MeanPoolingHead, GLSCLSimilarity

GIMHead = lambda: GLSCLSimilarity(sim_lambda=0.0)      # GIM alone: the model's head with lambda = 0

T, V, N, L, D = 3, 4, 5, 6, 16


@pytest.fixture
def feats():
    return random_features(T, V, N, L, D, seed=3)


def loop(fn):
    return torch.tensor([[float(fn(a, b)) for b in range(V)] for a in range(T)], dtype=torch.float64)


def test_shapes(feats):
    with torch.no_grad():
        for name, h in make_heads(D).items():
            s = h(*feats)
            assert s.shape == (T, V) and torch.isfinite(s).all(), name


def test_meanp_by_hand():
    "Two frames (1, 0) and (0, 1) average to (.5, .5); the third slot is padding: cos with (1, 0) is 1/sqrt(2)."
    text = dict(eos=torch.tensor([[1., 0.], [0., 2.]]))
    video = dict(frames=torch.tensor([[[1., 0.], [0., 1.], [9., 9.]]]), mask=torch.tensor([[True, True, False]]))
    torch.testing.assert_close(MeanPoolingHead()(text, video), torch.tensor([[2 ** -0.5], [2 ** -0.5]]))


def test_meanp_loop(feats):
    text, video = feats
    def pair(a, b):
        f = video['frames'][b][video['mask'][b]].double()
        return F.cosine_similarity(text['eos'][a].double(), f.mean(0), dim=0)
    torch.testing.assert_close(MeanPoolingHead()(text, video).double(), loop(pair), atol=1e-6, rtol=1e-5)


def test_xpool_loop(feats):
    text, video = feats
    h = XPoolHead(D).eval()
    with torch.no_grad():
        for p in h.parameters(): p.add_(0.1 * torch.randn_like(p))          # LayerNorm weights away from 1
        got = h(text, video)
        def pair(a, b):
            f = video['frames'][b][video['mask'][b]]
            q = h.q(h.ln_text(text['eos'][a]))
            k, v = h.k(h.ln_frames(f)), h.v(h.ln_frames(f))
            w = torch.softmax(k @ q / math.sqrt(D), 0)
            r = h.ln_o(h.o(w @ v))
            z = h.ln_out(h.fc(r) + r)
            return F.cosine_similarity(text['eos'][a], z, dim=0)
        torch.testing.assert_close(got.double(), loop(pair), atol=1e-5, rtol=1e-5)


def test_xclip_by_hand():
    "One word, one frame, equal features: all four similarities are 1."
    x = torch.tensor([[0.6, 0.8]])
    text = dict(eos=x, tokens=x[:, None], mask=torch.ones(1, 1, dtype=torch.bool))
    video = dict(frames=x[:, None], mask=torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(XCLIPHead()(text, video), torch.ones(1, 1))


def test_xclip_loop(feats):
    text, video = feats
    tau = 0.05
    def agg(s):                                                              # attention over a similarity vector
        return float((torch.softmax(s / tau, 0) * s).sum())
    def pair(a, b):
        s = F.normalize(text['eos'][a].double(), dim=0)
        w = F.normalize(text['tokens'][a][text['mask'][a]].double(), dim=-1)
        f = F.normalize(video['frames'][b][video['mask'][b]].double(), dim=-1)
        vbar = F.normalize(video['frames'][b][video['mask'][b]].double().mean(0), dim=0)
        fw = w @ f.T                                                         # [words, frames]
        words = agg(torch.tensor([agg(fw[i]) for i in range(len(w))], dtype=torch.float64))
        frames_ = agg(torch.tensor([agg(fw[:, n]) for n in range(len(f))], dtype=torch.float64))
        return (float(s @ vbar) + agg(w @ vbar) + agg(f @ s) + (words + frames_) / 2) / 4
    torch.testing.assert_close(XCLIPHead(tau)(text, video).double(), loop(pair), atol=1e-5, rtol=1e-5)


def test_attention_over_similarities_masks():
    s = torch.tensor([[1., 5., 2.]])
    got = attention_over_similarities(s, torch.tensor([[True, False, True]]), -1, 1.0)
    w = torch.softmax(torch.tensor([1., 2.]), 0)
    torch.testing.assert_close(got, (w * torch.tensor([1., 2.])).sum()[None])


def test_glscl_heads(feats):
    text, video = feats
    h = GLSCLHead(D, ff_dim=32).eval()
    with torch.no_grad():
        qt = torch.stack([h.lim(text['tokens'][a:a + 1], text['mask'][a:a + 1], 'text')[0] for a in range(T)])
        qv = torch.stack([h.lim(video['frames'][b:b + 1], video['mask'][b:b + 1], 'video')[0] for b in range(V)])
        sim2 = loop(lambda a, b: (qt[a] * qv[b]).sum(-1).mean())
        sim1 = global_interaction(text['eos'], video['frames'], video['mask'])
        torch.testing.assert_close(h(text, video).double(), sim1.double() + 0.5 * sim2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(GIMHead()(text, video), sim1)


@pytest.mark.parametrize('shape', [(7, 5, 12, 64), (1, 1, 12, 512), (3, 9, 4, 8)])
def test_gim_flops_closed_form(shape):
    T_, V_, N_, D_ = shape
    assert count_flops(GIMHead(), *random_features(T_, V_, N_, 2, D_)) == gim_flops(T_, V_, N_, D_)


def test_flop_model_closed_forms():
    "The fitted coefficients equal each head's count written out by hand, and predict a count at another size."
    h = make_heads(D, ff_dim=32)
    assert flop_model(h['CLIP4Clip (meanP)'], N, L, D) == dict(a=0, b=0, c=2 * D, d=0)
    assert flop_model(h['X-Pool'], N, L, D) == dict(a=2 * D * D, b=4 * N * D * D,
                                                    c=2 * (2 * N * D + 2 * D * D + D), d=0)
    assert flop_model(h['X-CLIP'], N, L, D) == dict(a=0, b=0, c=2 * (D + L * D + N * D + N * L * D), d=0)
    m = flop_model(h['GLSCL (GIM + LIM)'], N, L, D)
    assert m['c'] == 2 * (N * (D + 1) + N * N) + 2 * 8 * D and m['a'] > 0 and m['b'] > 0
    assert flops_at(m, 5, 3) == count_flops(h['GLSCL (GIM + LIM)'], *random_features(5, 3, N, L, D))


def test_fit_growth():
    a, b = 0.01, 3e-6
    f = lambda s: a * 2 * s + b * s * s
    got = fit_growth(100, f(100), 400, f(400))
    assert abs(got[0] - a) < 1e-12 and abs(got[1] - b) < 1e-15


def test_table_marks_extrapolation():
    heads = {'GLSCL (GIM)': GIMHead(), 'X-CLIP': XCLIPHead()}
    rows = efficiency_table(sizes=(16, 64), N=4, L=4, D=8, budget_s=1e-9, repeats=1, heads=heads, progress=False)
    assert [r['head'] for r in rows] == list(heads)
    assert all(not r['cells'][64]['measured'] for r in rows)   # the budget allows nothing past the probes
    assert all(r['cells'][16]['measured'] for r in rows)
    txt = format_table(rows)
    assert '~' in txt and 'X-CLIP' in txt


def test_main_gim_only(capsys):
    assert main(['--sizes', '64', '--gim-only', '--repeats', '1', '--dim', '32']) == 0
    assert 'x the floor' in capsys.readouterr().out
