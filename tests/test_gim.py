"GIM (glscl.gim) against slow per-pair references written here."
import math
import pytest
import torch
import glscl.gim as gim
from glscl.gim import frame_weights, global_interaction


def loop_weights(t, f, m, temp):
    "Softmax over the valid frames of one (text, video) pair, zeros on padding."
    w = torch.zeros(len(f), dtype=torch.float64)
    idx = [i for i in range(len(f)) if m[i]]
    s = [float(t @ f[i]) / temp for i in idx]
    mx = max(s)
    e = [math.exp(x - mx) for x in s]
    for i, x in zip(idx, e, strict=True): w[i] = x / sum(e)
    return w


def loop_weights_released(t, f, m, temp):
    "The released code: softmax over every slot, then multiplied by the mask (no renormalisation)."
    s = [float(t @ f[i]) / temp for i in range(len(f))]
    mx = max(s)
    e = [math.exp(x - mx) for x in s]
    return torch.tensor([x / sum(e) * float(m[i]) for i, x in enumerate(e)], dtype=torch.float64)


def loop_sim1(eos, frames, mask, temp, released=False):
    "Sim1 pair by pair, building every pooled video v_{a|b} explicitly."
    T, V = len(eos), len(frames)
    out = torch.zeros(T, V, dtype=torch.float64)
    wfn = loop_weights_released if released else loop_weights
    for a in range(T):
        for b in range(V):
            w = wfn(eos[a].double(), frames[b].double(), mask[b], temp)
            v = sum(w[i] * frames[b, i].double() for i in range(frames.shape[1]))
            out[a, b] = (eos[a].double() @ v) / (eos[a].double().norm() * v.norm())
    return out


def per_pair_v(eos, frames, mask, temp):
    "The straightforward vectorised formulation: materialise v [T, V, D], then cosine."
    w = frame_weights(eos, frames, mask, temp)
    v = torch.einsum('tvn,vnd->tvd', w, frames)
    return torch.cosine_similarity(eos[:, None], v, dim=-1)


@pytest.fixture
def batch():
    T, V, N, D = 5, 7, 6, 16
    eos, frames = torch.randn(T, D), torch.randn(V, N, D)
    lengths = torch.tensor([6, 1, 3, 6, 4, 2, 5])
    mask = torch.arange(N)[None] < lengths[:, None]
    return eos, frames, mask


def test_weights_match_loop(batch):
    eos, frames, mask = batch
    w = frame_weights(eos, frames, mask, 3.0)
    assert w.shape == (5, 7, 6)
    for a in range(5):
        for b in range(7):
            torch.testing.assert_close(w[a, b].double(), loop_weights(eos[a], frames[b], mask[b], 3.0),
                                       atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(5, 7))
    assert (w[:, ~mask] == 0).all()


def test_weights_released_variant(batch):
    eos, frames, mask = batch
    w = frame_weights(eos, frames, mask, 3.0, official_compat=True)
    for a in range(5):
        for b in range(7):
            torch.testing.assert_close(w[a, b].double(), loop_weights_released(eos[a], frames[b], mask[b], 3.0),
                                       atol=1e-6, rtol=1e-5)
    assert (w.sum(-1)[:, 1] < 1 - 1e-3).all()        # a padded video's weights no longer sum to one


@pytest.mark.parametrize('temp', [0.5, 3.0, 10.0])
def test_sim1_matches_loop(batch, temp):
    eos, frames, mask = batch
    torch.testing.assert_close(global_interaction(eos, frames, mask, temp).double(), loop_sim1(eos, frames, mask, temp),
                               atol=1e-5, rtol=1e-5)


def test_sim1_matches_per_pair_v(batch):
    eos, frames, mask = batch
    torch.testing.assert_close(global_interaction(eos, frames, mask), per_pair_v(eos, frames, mask, 3.0),
                               atol=1e-5, rtol=1e-5)


def test_garbage_padding_ignored(batch):
    eos, frames, mask = batch
    ref = global_interaction(eos, frames, mask)
    g = frames.clone()
    g[~mask] = 4 * torch.randn(int((~mask).sum()), frames.shape[-1])
    torch.testing.assert_close(global_interaction(eos, g, mask), ref)
    # without masking, padding would matter: the check above can fail
    assert (global_interaction(eos, g, None) - global_interaction(eos, frames, None)).abs().max() > 1e-3


def test_official_compat_is_the_released_computation(batch):
    eos, frames, mask = batch
    g = frames.clone()
    g[~mask] = torch.randn(int((~mask).sum()), frames.shape[-1])
    released = loop_sim1(eos, g, mask, 3.0, released=True)
    torch.testing.assert_close(global_interaction(eos, g, mask, official_compat=True).double(), released,
                               atol=1e-5, rtol=1e-5)
    # padding changes the released weights ...
    w_clean = frame_weights(eos, frames, mask, official_compat=True)
    w_garb = frame_weights(eos, g, mask, official_compat=True)
    assert (w_clean - w_garb).abs().max() > 1e-3
    # ... but only by a positive factor per pair, which the cosine removes: Sim1 equals the default mode's
    torch.testing.assert_close(global_interaction(eos, g, mask, official_compat=True), global_interaction(eos, g, mask),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('chunk', [1, 2, 3, 5, 100])
def test_chunked_equals_one_shot(batch, chunk):
    eos, frames, mask = batch
    one = global_interaction(eos, frames, mask, chunk_size=len(eos))
    torch.testing.assert_close(global_interaction(eos, frames, mask, chunk_size=chunk), one, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('budget', [1, 6, 13, 40])
def test_video_blocks(batch, budget, monkeypatch):
    eos, frames, mask = batch
    one = global_interaction(eos, frames, mask)
    monkeypatch.setattr(gim, 'GIM_BLOCK_ELEMENTS', budget)
    tc, vc = gim._gim_blocks(5, 7, 6, None)
    assert tc * vc * 6 <= max(budget, 6)
    torch.testing.assert_close(global_interaction(eos, frames, mask), one, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(global_interaction(eos, frames, mask, chunk_size=5), one, atol=1e-6, rtol=1e-6)


def test_gradients_match_per_pair(batch):
    eos, frames, mask = batch
    e1, f1 = eos.clone().requires_grad_(), frames.clone().requires_grad_()
    e2, f2 = eos.clone().requires_grad_(), frames.clone().requires_grad_()
    c = torch.randn(5, 7)
    (global_interaction(e1, f1, mask, chunk_size=2) * c).sum().backward()
    (per_pair_v(e2, f2, mask, 3.0) * c).sum().backward()
    torch.testing.assert_close(e1.grad, e2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(f1.grad, f2.grad, atol=1e-5, rtol=1e-4)


def test_training_batch_and_mask_dtypes():
    B, N, D = 8, 12, 32
    eos, frames = torch.randn(B, D, dtype=torch.float64), torch.randn(B, N, D, dtype=torch.float64)
    m = torch.ones(B, N, dtype=torch.long); m[3, 5:] = 0
    s = global_interaction(eos, frames, m)
    assert s.shape == (B, B) and s.dtype == torch.float64
    torch.testing.assert_close(s, global_interaction(eos, frames, m.bool()))
    torch.testing.assert_close(s, loop_sim1(eos, frames, m.bool(), 3.0))
    assert global_interaction(eos.half(), frames.half(), m).dtype == torch.float32


def test_errors(batch):
    eos, frames, mask = batch
    with pytest.raises(ValueError, match='no valid frame'):
        m = mask.clone(); m[2] = False
        global_interaction(eos, frames, m)
    with pytest.raises(ValueError, match='no valid frame'):
        frame_weights(eos, frames, m, official_compat=True)
    with pytest.raises(ValueError, match='feature size mismatch'):
        global_interaction(eos[:, :8], frames, mask)
    with pytest.raises(ValueError, match='frame_mask must be'):
        global_interaction(eos, frames, mask[:, :3])
    with pytest.raises(ValueError, match=r'\[T, D\]'):
        global_interaction(eos[None], frames, mask)
    with pytest.raises(ValueError, match=r'\[V, N, D\]'):
        global_interaction(eos, frames[0], mask)
    with pytest.raises(ValueError, match='temp'):
        global_interaction(eos, frames, mask, temp=0)
    with pytest.raises(ValueError, match='at least one text'):
        global_interaction(eos[:0], frames, mask)
    with pytest.raises(ValueError, match='chunk_size'):
        global_interaction(eos, frames, mask, chunk_size=0)


# --- robustness: padded slots never matter, non-finite real features are errors naming the item (issue 14) ---

@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_padding_ignored(batch, bad):
    eos, frames, mask = batch
    ref = loop_sim1(eos, frames, mask, 3.0)
    g = frames.clone()
    g[1, 3, 0] = bad                                  # video 1 has one valid frame: slot 3 is padding
    g[4, 5] = bad                                     # video 4 has four: slot 5 is padding
    s = global_interaction(eos, g, mask)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(global_interaction(eos, g, mask, chunk_size=2).double(), ref, atol=1e-5, rtol=1e-5)
    w = frame_weights(eos, g, mask)
    assert torch.isfinite(w).all() and (w[:, ~mask] == 0).all()
    torch.testing.assert_close(w, frame_weights(eos, frames, mask))


def test_non_finite_real_feature_is_an_error_naming_it(batch):
    eos, frames, mask = batch
    g = frames.clone(); g[3, 2, 7] = float('nan'); g[6, 0, 1] = float('inf')
    for fn in (global_interaction, frame_weights):
        with pytest.raises(ValueError, match=r'2 video feature\(s\) are not finite.*video indices \[3, 6\]'):
            fn(eos, g, mask)
    e = eos.clone(); e[2, 0] = float('nan')
    for fn in (global_interaction, frame_weights):
        with pytest.raises(ValueError, match=r'1 text feature\(s\) are not finite.*text indices \[2\]'):
            fn(e, frames, mask)


def test_official_compat_reads_every_slot(batch):
    """The released computation's softmax reads padded slots, so a NaN there is an error naming the video, not a NaN
    matrix."""
    eos, frames, mask = batch
    g = frames.clone(); g[1, 3, 0] = float('nan')
    with pytest.raises(ValueError, match=r'video indices \[1\]'):
        global_interaction(eos, g, mask, official_compat=True)


def test_gradient_path_equals_inference_path(batch):
    """With gradients GIM runs out of place; without, in place in reused buffers: same numbers, and finite padded
    gradients."""
    eos, frames, mask = batch
    g = frames.clone(); g[~mask] = float('nan')
    for oc in (False, True):
        f = frames if oc else g
        with torch.no_grad(): ref = global_interaction(eos, f, mask, official_compat=oc, chunk_size=3)
        e1, f1 = eos.clone().requires_grad_(), f.clone().requires_grad_()
        s = global_interaction(e1, f1, mask, official_compat=oc, chunk_size=3)
        torch.testing.assert_close(s.detach(), ref, atol=1e-6, rtol=1e-6)
        s.sum().backward()
        assert torch.isfinite(e1.grad).all() and torch.isfinite(f1.grad).all()
        if not oc: assert (f1.grad[~mask] == 0).all()


def test_large_scores_stay_exact():
    "Scores of hundreds (sharp softmax) against a float64 loop: the shift by the per-pair maximum keeps them exact."
    g = torch.Generator().manual_seed(1)
    eos, frames = 20 * torch.randn(4, 16, generator=g), 20 * torch.randn(6, 5, 16, generator=g)
    mask = torch.arange(5)[None] < torch.tensor([5, 2, 1, 4, 3, 5])[:, None]
    torch.testing.assert_close(global_interaction(eos, frames, mask, 0.5).double(), loop_sim1(eos, frames, mask, 0.5),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='leave float32 no room'):
        global_interaction(eos * 1e16, frames * 1e16, mask)
