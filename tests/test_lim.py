"LIM (glscl.lim) against a hand-written post-norm decoder and loop references."
import math
import pytest
import torch
import torch.nn.functional as F
from glscl.lim import LocalInteraction, cross_attention_maps, query_similarity

D, K, L, H = 16, 4, 2, 4


def make(**kw):
    return LocalInteraction(D, n_queries=K, n_layers=L, n_heads=H, ff_dim=32, dropout=0.0, **kw)


def ref_attention(mha, x, mem, valid):
    """Multi-head attention head by head and query by query; `valid [L]` bool or None. Returns (out, weights averaged
    over heads)."""
    Wq, Wk, Wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    q, k, v = x @ Wq.T + bq, mem @ Wk.T + bk, mem @ Wv.T + bv
    h, dh = mha.num_heads, x.shape[-1] // mha.num_heads
    heads, att = [], torch.zeros(len(x), len(mem))
    for hi in range(h):
        sl = slice(hi * dh, (hi + 1) * dh)
        rows = []
        for i in range(len(x)):
            logits = torch.stack([q[i, sl] @ k[j, sl] / math.sqrt(dh) for j in range(len(mem))])
            if valid is not None: logits = logits.masked_fill(~valid, float('-inf'))
            p = torch.softmax(logits, 0)
            att[i] += p / h
            rows.append(sum(p[j] * v[j, sl] for j in range(len(mem))))
        heads.append(torch.stack(rows))
    return torch.cat(heads, -1) @ mha.out_proj.weight.T + mha.out_proj.bias, att


def ref_decode(lim, memory, mask, modality):
    "Post-norm decoder, one item at a time: x = LN1(x + SA(x)); x = LN2(x + CA(x, mem)); x = LN3(x + FF(x))."
    queries, decoder = lim.parts(modality)
    outs, maps = [], []
    for b in range(len(memory)):
        x, m = queries, None if mask is None else mask[b]
        per_layer = []
        for layer in decoder.layers:
            x = layer.norm1(x + ref_attention(layer.self_attn, x, x, None)[0])
            a, att = ref_attention(layer.multihead_attn, x, memory[b], m)
            x = layer.norm2(x + a)
            x = layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))
            per_layer.append(att)
        outs.append(x); maps.append(torch.stack(per_layer))
    return torch.stack(outs), torch.stack(maps, 1)


@pytest.fixture
def data():
    frames = torch.randn(3, 6, D)
    fmask = torch.arange(6)[None] < torch.tensor([[6], [2], [4]])
    return frames, fmask


def test_forward_matches_reference(data):
    lim = make().eval()
    frames, fmask = data
    with torch.no_grad():
        ref, _ = ref_decode(lim, frames, fmask, 'video')
        torch.testing.assert_close(lim(frames, fmask), F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5)
        ref_nomask, _ = ref_decode(lim, frames, None, 'video')
        torch.testing.assert_close(lim(frames, fmask, official_compat=True), F.normalize(ref_nomask, dim=-1),
                                   atol=1e-5, rtol=1e-5)


def test_outputs_unit_norm_and_shape(data):
    lim = make()
    frames, fmask = data
    q = lim(frames, fmask)
    assert q.shape == (3, K, D)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(3, K))


def test_queries_init_uniform_and_post_norm():
    lim = LocalInteraction(64, n_queries=200)
    q = lim.queries.detach()
    assert q.min() >= 0 and q.max() < 1 and abs(q.mean().item() - 0.5) < 0.02
    layer = lim.decoder.layers[0]
    assert len(lim.decoder.layers) == 3 and lim.decoder.norm is None
    assert layer.norm_first is False and layer.linear1.out_features == 2048 and layer.self_attn.num_heads == 8
    assert layer.self_attn.batch_first and layer.activation is F.relu and layer.dropout.p == 0.1


def test_padding_mask_respected(data):
    lim = make().eval()
    frames, fmask = data
    g = frames.clone()
    g[~fmask] = 5 * torch.randn(int((~fmask).sum()), D)
    with torch.no_grad():
        torch.testing.assert_close(lim(g, fmask), lim(frames, fmask))
        assert (lim(g, fmask, official_compat=True) - lim(frames, fmask, official_compat=True)).abs().max() > 1e-3
        # the full row is unaffected either way
        torch.testing.assert_close(lim(g, fmask, official_compat=True)[0], lim(frames, fmask, official_compat=True)[0])


def test_shared_and_unshared():
    n = lambda m: sum(p.numel() for p in m.parameters())
    shared, uq, ud, uu = make(), make(share_queries=False), make(share_decoder=False), make(
        share_queries=False, share_decoder=False)
    dec = sum(p.numel() for p in shared.decoder.parameters())
    assert n(uq) == n(shared) + K * D and n(ud) == n(shared) + dec and n(uu) == 2 * n(shared)
    mem = torch.randn(2, 5, D)
    for m in (shared, uq, ud, uu): m.eval()
    with torch.no_grad():
        torch.testing.assert_close(shared(mem, modality='text'), shared(mem, modality='video'))
        for m in (uq, ud, uu):
            assert (m(mem, modality='text') - m(mem, modality='video')).abs().max() > 1e-3
    assert set(dict(uu.named_parameters()).keys()) >= {'queries.text', 'queries.video'}


def test_gradients_reach_queries_and_every_layer(data):
    for kw in ({}, dict(share_queries=False, share_decoder=False)):
        lim = make(**kw).train()
        frames, fmask = data
        tokens, tmask = torch.randn(2, 7, D), torch.ones(2, 7, dtype=torch.bool)
        (lim(frames, fmask, 'video').sum() * 0.3 + (lim(tokens, tmask, 'text') ** 2).sum()).backward()
        for name, p in lim.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cross_attention_maps(data):
    lim = make().train()
    frames, fmask = data
    maps, out = cross_attention_maps(lim, frames, fmask, return_output=True)
    assert lim.training                                          # mode restored
    assert maps.shape == (L, 3, K, 6)
    lim.eval()
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(out, dim=-1), lim(frames, fmask), atol=1e-5, rtol=1e-5)
        ref_out, ref_maps = ref_decode(lim, frames, fmask, 'video')
    torch.testing.assert_close(maps, ref_maps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps.sum(-1), torch.ones(L, 3, K))
    assert (maps.permute(1, 3, 0, 2)[~fmask] == 0).all()         # padded frames get no attention
    assert cross_attention_maps(lim, frames).shape == (L, 3, K, 6)


def loop_sim2(qt, qv):
    out = torch.zeros(len(qt), len(qv))
    for a in range(len(qt)):
        for b in range(len(qv)):
            out[a, b] = sum(float(qt[a, k] @ qv[b, k]) for k in range(qt.shape[1])) / qt.shape[1]
    return out


def test_query_similarity():
    qt, qv = F.normalize(torch.randn(5, K, D), dim=-1), F.normalize(torch.randn(7, K, D), dim=-1)
    torch.testing.assert_close(query_similarity(qt, qv), loop_sim2(qt, qv), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='same K and D'): query_similarity(qt, qv[:, :2])
    with pytest.raises(ValueError, match=r'\[T, K, D\]'): query_similarity(qt[0], qv)


def test_errors(data):
    lim = make()
    frames, fmask = data
    m = fmask.clone(); m[1] = False
    with pytest.raises(ValueError, match='no valid position'): lim(frames, m)
    with pytest.raises(ValueError, match='no valid position'): cross_attention_maps(lim, frames, m)
    with pytest.raises(ValueError, match='mask must be'): lim(frames, fmask[:, :3])
    with pytest.raises(ValueError, match='memory must be'): lim(torch.randn(3, 6, D + 1))
    with pytest.raises(ValueError, match='modality'): lim(frames, fmask, 'audio')
    with pytest.raises(ValueError, match='multiple of n_heads'): LocalInteraction(10, n_heads=4)
