"The GLSCL module: its forward against a slow per-pair reference, gradients, caches, chunks, compat switch."
import pytest
import torch
import torch.nn.functional as F
from glscl.config import load_config
from glscl.model import GLSCL
from glscl.losses import intra_diversity_loss, inter_consistency_loss

@pytest.fixture(scope='module')
def cfg():
    return load_config('toy', clip_pretrained='none', lim_dropout=0.0, freeze_visual=False, freeze_conv1=False)

@pytest.fixture(scope='module')
def model(cfg):
    torch.manual_seed(0)
    return GLSCL(cfg).eval()

def make_batch(B=4, N=5, L=10, S=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 49000, (B, L), generator=g)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for i, n in enumerate([10, 6, 3, 8][:B]):
        ids[i, 0] = 49406; ids[i, n - 1] = 49407; ids[i, n:] = 0; mask[i, :n] = True
    fm = torch.zeros(B, N, dtype=torch.bool)
    for i, n in enumerate([5, 2, 4, 3][:B]): fm[i, :n] = True
    frames = torch.randn(B, N, 3, S, S, generator=g) * fm[..., None, None, None]
    return dict(ids=ids, mask=mask, frames=frames, frame_mask=fm)

def reference_similarity(cfg, text, video):
    "Slow, obvious S = Sim1 + lambda Sim2: per pair, build v_{a|b} from the valid frames, then the queries' mean dot."
    T, V, K = len(text['eos']), len(video['frames']), text['query'].shape[1]
    S = torch.zeros(T, V)
    for a in range(T):
        t = text['eos'][a]
        for b in range(V):
            f = video['frames'][b][video['mask'][b]]
            w = torch.softmax(f @ t / cfg.gim_temp, 0)
            v = (w[:, None] * f).sum(0)
            sim1 = (t @ v) / (t.norm() * v.norm())
            sim2 = sum(text['query'][a, k] @ video['query'][b, k] for k in range(K)) / K
            S[a, b] = sim1 + cfg.sim_lambda * sim2
    return S

def test_similarity_matches_reference(model, cfg):
    b = make_batch()
    with torch.no_grad():
        t, v = model.encode_text(b['ids'], b['mask']), model.encode_video(b['frames'], b['frame_mask'])
        S = model.similarity(t, v)
    # S's entries go down to ~4e-3 here: relative tolerance (measured error 3e-6), no absolute floor of 1e-5
    torch.testing.assert_close(S, reference_similarity(cfg, t, v), rtol=1e-4, atol=0)
    assert (t['query'].shape == (4, cfg.n_queries, 128)
            and torch.allclose(t['query'].norm(dim=-1), torch.ones(4, cfg.n_queries), atol=1e-5))
    with torch.no_grad(): s1 = model.similarity(t, v, use_lim=False)
    # lambda * Sim2 is 0.01 ... 0.06 here: relative tolerance (measured error 1e-7)
    torch.testing.assert_close(S - s1,
                               cfg.sim_lambda * (t['query'].flatten(1) @ v['query'].flatten(1).T) / cfg.n_queries,
                               rtol=1e-5, atol=0)

def test_forward_losses_match_reference(model, cfg):
    b = make_batch()
    with torch.no_grad():
        out = model(b)
        t, v = model.encode_text(b['ids'], b['mask']), model.encode_video(b['frames'], b['frame_mask'])
    S = reference_similarity(cfg, t, v)
    s = model.logit_scale.exp().clamp(max=100)
    B = len(S)
    nce = 0.5 * (sum(-torch.log_softmax(s * S[i], 0)[i]
                     for i in range(B)) / B + sum(-torch.log_softmax(s * S[:, i], 0)[i] for i in range(B)) / B)
    qv, qt = v['query'], t['query']; K = qv.shape[1]
    M = sum(qv[i] @ qt[i].T for i in range(B)) / K
    icl = (((qv.mean(0) - qt.mean(0)) ** 2).mean()
           + cfg.icl_beta * sum((M[k, k] - cfg.icl_target) ** 2 for k in range(K)))
    G = sum(qv[i] @ qv[i].T for i in range(B)) / B
    idl = cfg.idl_alpha * sum(F.relu(cfg.idl_margin + G[i, j] - G[i, i]) + F.relu(cfg.idl_margin + G[i, j] - G[j, j])
                              for i in range(K) for j in range(K) if i != j) / (K * (K - 1))
    # each part against its own size (atol=0): at the paper's alpha IDL is ~1e-5, under any absolute tolerance of 1e-5
    for k, ref in dict(nce=nce, icl=icl, idl=idl).items():
        assert ref > 0, k
        torch.testing.assert_close(out[k], ref, rtol=1e-4, atol=0, msg=lambda m, k=k: f'{k}: {m}')
    beta_term = cfg.icl_beta * sum((M[k, k] - cfg.icl_target) ** 2 for k in range(K))
    assert beta_term > 100 * 1e-4 * icl                           # ICL's diagonal term is visible at that tolerance
    torch.testing.assert_close(out['loss'], nce + icl + idl, rtol=1e-5, atol=0)

def test_gradients_reach_every_part(cfg):
    torch.manual_seed(1)
    m = GLSCL(cfg).train()
    m(make_batch())['loss'].backward()
    for name, mod in [('lim', m.lim), ('temporal', m.temporal)]:
        for pn, p in mod.named_parameters(): assert p.grad is not None and p.grad.abs().sum() > 0, f'{name}.{pn}'
    assert cfg.share_queries and m.lim.queries.grad.abs().sum() > 0        # the one shared query set
    assert (m.clip.model.visual.conv1.weight.grad.abs().sum() > 0
            and m.clip.model.token_embedding.weight.grad.abs().sum() > 0)

def test_chunked_equals_one_shot(model):
    b = make_batch()
    with torch.no_grad():
        t, v = model.encode_text(b['ids'], b['mask']), model.encode_video(b['frames'], b['frame_mask'])
        full = model.similarity(t, v)
        for c in (1, 2, 3): assert torch.allclose(model.similarity(t, v, chunk_size=c), full, atol=1e-6)

def test_similarity_never_reruns_the_decoder(model, monkeypatch):
    b = make_batch()
    with torch.no_grad():
        t, v = model.encode_text(b['ids'], b['mask']), model.encode_video(b['frames'], b['frame_mask'])
    monkeypatch.setattr(model.lim, 'forward', lambda *a, **k: (_ for _ in ()).throw(AssertionError('decoder re-run')))
    with torch.no_grad(): model.similarity(t, v)

def test_official_compat(cfg, model):
    compat = GLSCL(cfg.replace(official_compat=True), encoder=model.clip).eval()
    compat.load_state_dict(model.state_dict())
    b = make_batch()
    with torch.no_grad():
        assert not torch.allclose(compat(b)['loss'], model(b)['loss'])
        # with every token and frame slot real, the released forward is ours (up to its LayerNorm eps)
        full = make_batch(N=cfg.max_frames); full['mask'][:] = True; full['frame_mask'][:] = True
        full['ids'][:, -1] = 49407
        # part by part, relative (measured 6e-7): an atol of 1e-4 on the total would hide any change to ICL (1e-2) or
        # IDL (1e-5)
        a, o = compat(full), model(full)
        for k in ('nce', 'icl', 'idl', 'loss'):
            assert o[k] > 0, k
            torch.testing.assert_close(a[k], o[k], rtol=1e-5, atol=0, msg=lambda m, k=k: f'{k}: {m}')

def test_official_compat_pads(cfg, model):
    "The released padding: text pads hidden as keys; frame pads = CLIP(zero image) through the temporal transformer."
    compat = GLSCL(cfg.replace(official_compat=True), encoder=model.clip).eval()
    compat.load_state_dict(model.state_dict())
    b = make_batch()
    with torch.no_grad():
        t0, t1 = model.encode_text(b['ids'], b['mask']), compat.encode_text(b['ids'], b['mask'])
        m = b['mask']
        assert torch.allclose(t0['tokens'][m], t1['tokens'][m], atol=1e-5)      # real tokens unchanged
        assert not torch.allclose(t0['tokens'][~m], t1['tokens'][~m], atol=1e-3)  # pads attend to real tokens only
        # slow reference of the released text mask: causal + padded keys, built per head by hand
        clip = model.clip.model; L = b['ids'].shape[1]
        am = torch.full((L, L), float('-inf')).triu(1)
        ref = []
        for i in range(len(b['ids'])):
            a = am.clone(); a[:, ~m[i]] = float('-inf')
            x = clip.token_embedding(b['ids'][i:i + 1]) + clip.positional_embedding[:L]
            x = clip.ln_final(clip.transformer(x, attn_mask=a)) @ clip.text_projection
            ref.append(x[0])
        assert torch.allclose(torch.stack(ref), t1['tokens'], atol=1e-5)
        v0, v1 = model.encode_video(b['frames'], b['frame_mask']), compat.encode_video(b['frames'], b['frame_mask'])
        assert v1['frames'].shape[1] == cfg.max_frames and v1['mask'].shape[1] == cfg.max_frames
        pad = ~v1['mask']
        assert (v0['frames'][~b['frame_mask']] == 0).all() and (v1['frames'][pad].abs().sum(-1) > 0).all()
        # reference: CLIP features of zero images in every padded slot, the temporal transformer with pads kept
        f = model.clip.encode_frames(b['frames']); B, N = b['frame_mask'].shape
        zero = model.clip.model.encode_image(torch.zeros(1, 3, 64, 64))[0]
        full = torch.cat([f, zero.expand(B, cfg.max_frames - N, -1)], 1)
        fm = torch.cat([b['frame_mask'], torch.zeros(B, cfg.max_frames - N, dtype=torch.bool)], 1)
        full = torch.where(fm[..., None], full, zero)
        assert torch.allclose(v1['frames'], compat.temporal(full, fm, zero_pads=False), atol=1e-5)
        # features given beforehand (frozen image tower) take the same path
        frozen = GLSCL(cfg.replace(official_compat=True, freeze_visual=True), encoder=model.clip).eval()
        frozen.load_state_dict(model.state_dict())
        vf = frozen.encode_video(b['frames'], b['frame_mask'], features=f * b['frame_mask'][..., None])
        assert torch.allclose(vf['frames'], v1['frames'], atol=1e-5)
        for p in model.clip.model.visual.parameters(): p.requires_grad_(True)

def test_released_fp16_precision(cfg, model):
    "released-fp16: exactly CLIP's Linear/Conv/attention/projection weights in fp16; the heads, norms, embeddings fp32."
    half = GLSCL(cfg.replace(precision='released-fp16'))
    half.load_state_dict(model.state_dict())
    want16 = set()
    for name, mod in half.clip.model.named_modules():
        for pn, _ in mod.named_parameters(recurse=False):
            full = f"clip.model.{name}.{pn}" if name else f"clip.model.{pn}"
            if (isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))
                or (isinstance(mod, torch.nn.MultiheadAttention) and pn.startswith('in_proj'))):
                want16.add(full)
            if pn in ('text_projection', 'proj'): want16.add(full)
    got16 = {n for n, p in half.named_parameters() if p.dtype == torch.float16}
    assert got16 == want16 and len(got16) > 10
    assert all(p.dtype == torch.float32 for n, p in half.named_parameters() if not n.startswith('clip.'))
    assert half.logit_scale.dtype == torch.float32 and half.clip.model.ln_final.weight.dtype == torch.float32
    b = make_batch()
    with torch.no_grad():
        h, f = half.eval()(b), model(b)
    assert torch.isfinite(h['loss']) and abs(h['loss'].item() - f['loss'].item()) < 0.05
    # a half CLIP feeds a float32 temporal transformer (no `mixed dtype` error) and trains: fp16 grads on fp16 weights
    half.train()(b)['loss'].backward()
    assert half.clip.model.visual.conv1.weight.grad.dtype == torch.float16

def test_freeze_conv1(cfg):
    m = GLSCL(cfg.replace(freeze_conv1=True))
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {'clip.model.visual.conv1.weight'}

def test_unshared_and_text_idl(cfg, model):
    u = GLSCL(cfg.replace(share_queries=False, share_decoder=False), encoder=model.clip)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(u.lim) == 2 * n(model.lim)
    b = make_batch()
    # margin 2 keeps every hinge of both modalities active (G's entries lie in [-1, 1]), so the textual term is > 0
    wide = dict(idl_margin=2.0)
    with torch.no_grad():
        vis = GLSCL(cfg.replace(**wide), encoder=model.clip).eval(); vis.load_state_dict(model.state_dict())
        tx = GLSCL(cfg.replace(idl_text=True, **wide), encoder=model.clip).eval()
        tx.load_state_dict(model.state_dict())
        qt = model.encode_text(b['ids'], b['mask'])['query']
        text_term = intra_diversity_loss(qt, cfg.idl_alpha, 2.0)
        assert text_term > 0
        assert torch.allclose(tx(b)['idl'], vis(b)['idl'] + text_term, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match='tt_init'): GLSCL(cfg.replace(tt_init='zeros'), encoder=model.clip)

def test_unshared_parts_decode_their_own_modality(cfg, model):
    """share_queries=False, share_decoder=False: captions go through the text queries and decoder, videos through the
    video ones."""
    torch.manual_seed(2)
    u = GLSCL(cfg.replace(share_queries=False, share_decoder=False), encoder=model.clip).eval()
    b = make_batch()
    with torch.no_grad():
        t, v = u.encode_text(b['ids'], b['mask']), u.encode_video(b['frames'], b['frame_mask'])
        own_t, other_t = u.lim(t['tokens'], t['mask'], modality='text'), u.lim(t['tokens'], t['mask'], modality='video')
        own_v, other_v = u.lim(v['frames'], v['mask'], modality='video'), u.lim(v['frames'], v['mask'], modality='text')
    torch.testing.assert_close(t['query'], own_t, rtol=1e-6, atol=0)
    torch.testing.assert_close(v['query'], own_v, rtol=1e-6, atol=0)
    assert (own_t - other_t).abs().max() > 0.05 and (own_v - other_v).abs().max() > 0.05   # the two paths really differ
    # the training forward reads the same query outputs: Sim2 in the logits, ICL, IDL (both modalities)
    c = cfg.replace(share_queries=False, share_decoder=False, idl_text=True)
    for gather_mode in ('exact', 'released'):   # 'released' decodes after the gather (add_queries in forward)
        m = GLSCL(c.replace(ddp_gather=gather_mode), encoder=model.clip).eval(); m.load_state_dict(u.state_dict())
        with torch.no_grad():
            out = m(b) if gather_mode == 'exact' else m(b, gather=lambda d: d)
        S = reference_similarity(cfg, dict(t, query=own_t), dict(v, query=own_v))
        s = m.logit_scale.exp().clamp(max=100)
        nce = 0.5 * (F.cross_entropy(s * S, torch.arange(4)) + F.cross_entropy(s * S.T, torch.arange(4)))
        icl = cfg.icl_weight * inter_consistency_loss(own_v, own_t, cfg.icl_beta, cfg.icl_target, norm=cfg.icl_norm)
        idl = (intra_diversity_loss(own_v, cfg.idl_alpha, cfg.idl_margin)
               + intra_diversity_loss(own_t, cfg.idl_alpha, cfg.idl_margin))
        for k, ref in dict(nce=nce, icl=icl, idl=idl).items():
            assert ref > 0, k
            torch.testing.assert_close(out[k], ref, rtol=1e-4, atol=0,
                                       msg=lambda msg, g=gather_mode, k=k: f'{g} {k}: {msg}')
    # gradients: the text loss reaches the text queries and decoder, not only the video ones
    u.train()
    loss = u(b)['loss']
    names, params = zip(*u.lim.named_parameters(), strict=True)
    grads = dict(zip(names, torch.autograd.grad(loss, params, allow_unused=True), strict=True))
    assert {'queries.text', 'queries.video'} <= set(grads)
    for n, g in grads.items(): assert g is not None and g.abs().sum() > 0, n


def test_mean_pooling_head_matches_reference(cfg, model):
    m = GLSCL(cfg.replace(head='meanp'), encoder=model.clip).eval()
    assert m.temporal is None and m.lim is None
    b = make_batch()
    with torch.no_grad():
        t, v = m.encode_text(b['ids'], b['mask']), m.encode_video(b['frames'], b['frame_mask'])
        S = m.similarity(t, v)
        out = m(b)
    ref = torch.zeros(4, 4)
    for a in range(4):
        for j in range(4):
            f = v['frames'][j][b['frame_mask'][j]].mean(0)
            ref[a, j] = F.cosine_similarity(t['eos'][a], f, dim=0)
    assert 'query' not in t and 'query' not in v
    assert torch.allclose(S, ref, atol=1e-5)
    assert out['icl'] == 0 and out['idl'] == 0 and torch.allclose(out['loss'], out['nce'])
    with pytest.raises(ValueError, match='head'): GLSCL(cfg.replace(head='xpool'), encoder=model.clip)

def test_ablation_switches(cfg, model):
    b = make_batch()
    with torch.no_grad():
        full = model(b)
        no_icl = GLSCL(cfg.replace(icl_weight=0), encoder=model.clip).eval(); no_icl.load_state_dict(model.state_dict())
        o = no_icl(b)
        assert (o['icl'] == 0 and full['icl'] > 0 and torch.allclose(o['nce'], full['nce'])
                and torch.allclose(o['idl'], full['idl']))
        half = GLSCL(cfg.replace(icl_weight=0.5), encoder=model.clip).eval(); half.load_state_dict(model.state_dict())
        assert torch.allclose(half(b)['icl'], 0.5 * full['icl'])
    sim1 = GLSCL(cfg.replace(sim_lambda=0, icl_weight=0, idl_alpha=0), encoder=model.clip)
    assert sim1.lim is None and not sim1.uses_lim and model.uses_lim
