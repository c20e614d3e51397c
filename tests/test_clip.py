"CLIP encoding: tokens/EOS and frames equal open_clip's own outputs; checkpoints; offline errors; temporal transformer."
import pytest
import torch
import torch.nn.functional as F
import open_clip
import glscl.clip as gc
from glscl.clip import load_clip, TemporalTransformer
from glscl.tinyclip import clip_contrastive_targets, pretrain_tiny_clip
from glscl.data import tokenize

def rel_err(a, b): return ((a - b).norm() / b.norm()).item()

@pytest.fixture(scope='module')
def enc():
    torch.manual_seed(0)
    return load_clip('glscl-tiny', None)

CAPS = ['a red circle moves left', 'at the end a big blue box gets bigger',
        'a green triangle rises, then a yellow ball falls']

def test_eos_equals_open_clip(enc):
    ids, mask = tokenize(CAPS, max_words=32)
    tokens, eos = enc.encode_text(ids)
    assert tokens.shape == (3, 32, 128) and eos.shape == (3, 128)
    with torch.no_grad(): ref = enc.model.encode_text(ids)
    assert rel_err(eos, ref) < 1e-4
    # the EOS token is the last valid token, and it is the row of `tokens` at that position
    pos = mask.sum(1) - 1
    assert torch.equal(eos, tokens[torch.arange(3), pos])

def test_short_max_words_keeps_eos(enc):
    ids, mask = tokenize(CAPS, max_words=12)
    _, eos = enc.encode_text(ids)
    with torch.no_grad(): ref = enc.model.encode_text(F.pad(ids, (0, 32 - 12)))
    assert rel_err(eos, ref) < 1e-4
    with pytest.raises(ValueError, match='context length'): enc.encode_text(torch.ones(1, 40, dtype=torch.long))

def test_pad_mask_hides_only_the_padding(enc):
    """The released variant (`pad_mask`): real tokens and the EOS feature are unchanged, padded positions' features
    change."""
    ids, mask = tokenize(CAPS, max_words=32)
    with torch.no_grad(): plain, released = enc.encode_text(ids), enc.encode_text(ids, mask)
    assert torch.allclose(plain[1], released[1], atol=1e-5)
    assert torch.allclose(plain[0][mask], released[0][mask], atol=1e-5)
    assert (plain[0][~mask] - released[0][~mask]).abs().max() > 1e-3

def test_frames_equal_encode_image(enc):
    x = torch.randn(2, 3, 3, 64, 64)
    out = enc.encode_frames(x)
    with torch.no_grad(): ref = enc.model.encode_image(x.flatten(0, 1)).view(2, 3, -1)
    assert rel_err(out, ref) < 1e-4
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    outm = enc.encode_frames(x, mask)
    assert rel_err(outm[mask], ref[mask]) < 1e-4 and outm[~mask].abs().sum() == 0
    with pytest.raises(ValueError, match=r'\[B,N,3,H,W\]'): enc.encode_frames(x[0])

def test_checkpoint_roundtrip(enc, tmp_path):
    p = tmp_path/'tiny.pt'
    torch.save(enc.model.state_dict(), p)
    enc2 = load_clip('glscl-tiny', str(p))
    ids, mask = tokenize(CAPS, 32)
    x = torch.randn(1, 2, 3, 64, 64)
    assert torch.equal(enc.encode_text(ids)[1], enc2.encode_text(ids)[1])
    assert torch.equal(enc.encode_frames(x), enc2.encode_frames(x))

def test_jit_archive_reads_weights_and_uses_quickgelu(enc, tmp_path):
    p = tmp_path/'jit.pt'
    torch.jit.save(torch.jit.script(enc.model), p)
    enc2 = load_clip('glscl-tiny', str(p))
    sd, sd2 = enc.model.state_dict(), enc2.model.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert isinstance(enc2.model.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)

def test_bad_checkpoints(enc, tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'): load_clip('glscl-tiny', str(tmp_path/'nope.pt'))
    sd = enc.model.state_dict(); sd['text_projection'] = torch.zeros(128, 64); sd.pop('ln_final.weight')
    p = tmp_path/'bad.pt'; torch.save(sd, p)
    with pytest.raises(ValueError, match='does not fit') as e: load_clip('glscl-tiny', str(p))
    assert 'text_projection' in str(e.value) and 'ln_final.weight' in str(e.value) and str(p) in str(e.value)
    junk = tmp_path/'junk.pt'; junk.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='not a readable CLIP checkpoint'): load_clip('glscl-tiny', str(junk))
    with pytest.raises(ValueError, match='unknown open_clip model'): load_clip('ViT-Nope', None)
    with pytest.raises(ValueError, match='neither a file nor a pretrained tag'): load_clip('glscl-tiny', 'laion2b')

def test_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HOME', str(tmp_path)); monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path/'hub'))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, 'HF_HUB_CACHE', str(tmp_path/'hub'), raising=False)
    calls = []
    monkeypatch.setattr(gc, '_online', lambda *a, **k: calls.append(1) or False)
    with pytest.raises(RuntimeError) as e: load_clip('ViT-B-32', 'openai')
    msg = str(e.value)
    assert calls and 'offline' in msg and "load_clip('ViT-B-32', '/path/to/checkpoint.pt')" in msg

def test_temporal_transformer_mask_and_init(enc):
    tt = TemporalTransformer.from_clip(enc, n_layers=4)
    assert len(tt.blocks) == 4 and torch.equal(tt.pos, enc.model.positional_embedding)
    sd_b, sd_t = tt.blocks[2].state_dict(), enc.model.transformer.resblocks[2].state_dict()
    assert all(torch.equal(sd_b[k], sd_t[k]) for k in sd_b)
    assert (
        tt.blocks[0].attn.in_proj_weight.data_ptr() != enc.model.transformer.resblocks[0].attn.in_proj_weight.data_ptr()
    )
    f = torch.randn(3, 7, 128)
    mask = torch.ones(3, 7, dtype=torch.bool); mask[0, 5:] = False; mask[2, 2:] = False
    out = tt(f, mask)
    g = f.clone(); g[~mask] = 50 * torch.randn(int((~mask).sum()), 128)
    out2 = tt(g, mask)
    assert torch.allclose(out[mask], out2[mask], atol=1e-5) and out2[~mask].abs().sum() == 0
    # a padded video gives the same valid outputs as the same video cut to its valid frames
    assert torch.allclose(tt(f[2:3, :2])[0], out[2, :2], atol=1e-5)
    assert torch.allclose(tt(f), tt(f, torch.ones(3, 7, dtype=torch.bool)))
    with pytest.raises(ValueError, match='no valid frame'): tt(f, torch.zeros(3, 7, dtype=torch.bool))

def test_temporal_transformer_residual_reference(enc):
    "F <- TT(F + P) + F, against a plain loop over the blocks without masking (all frames valid)."
    tt = TemporalTransformer(128, n_layers=2, heads=4, n_positions=12)
    f = torch.randn(2, 5, 128)
    x = f + tt.pos[:5]
    for b in tt.blocks: x = b(x)
    assert torch.allclose(tt(f), x + f, atol=1e-5)

def test_temporal_transformer_gets_gradients(enc):
    tt = TemporalTransformer.from_clip(enc, 4)
    tt(torch.randn(2, 4, 128), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()).pow(2).sum().backward()
    assert (tt.pos.grad.abs().sum() > 0
            and all(p.grad is not None and p.grad.abs().sum() > 0 for p in tt.blocks.parameters()))

def test_contrastive_targets_reference():
    cid = torch.tensor([3, 1, 3, 2, 3])
    t = clip_contrastive_targets(cid)
    for i in range(5):
        same = [j for j in range(5) if cid[j] == cid[i]]
        for j in range(5): assert abs(t[i, j].item() - (1 / len(same) if j in same else 0)) < 1e-7

def test_pretraining_is_deterministic():
    a = pretrain_tiny_clip(steps=2, batch_size=8, n_frames=32, progress=False)
    b = pretrain_tiny_clip(steps=2, batch_size=8, n_frames=32, progress=False)
    c = open_clip.create_model('glscl-tiny').state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].dtype.is_floating_point)
