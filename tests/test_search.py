"""glscl.search: the index round-trips, refuses a foreign model, skips a corrupt file, updates incrementally, and ranks
as GLSCL.similarity on the evaluation path's encodings."""
import numpy as np
import pytest
import torch
from glscl.config import load_config
from glscl.model import GLSCL
from glscl.index import VideoIndex, IndexMismatch, list_videos, model_id
from glscl.search import score_index, main      # importing glscl.search adds VideoIndex.search and .scores
from glscl.presetdata import ensure_data
from glscl.train import encode_texts, encode_videos, split_items


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    cfg = load_config('toy')
    ensure_data(cfg)
    torch.manual_seed(cfg.seed)
    model = GLSCL(cfg).eval()
    captions, ids, cv = split_items(cfg, cfg.test_split)
    ids = ids[:8]
    folder = tmp_path_factory.mktemp('videos')
    for v in ids: (folder/f'{v}.mp4').symlink_to((ensure_data(cfg)/'videos'/f'{v}.mp4').resolve())
    (folder/'corrupt.mp4').write_bytes(b'\x00' * 100)
    (folder/'notes.txt').write_text('not a video')
    path = tmp_path_factory.mktemp('index')
    index = VideoIndex.build(folder, model, path, progress=False)
    caps = [c for c, j in zip(captions, cv, strict=True) if j < len(ids)]
    return dict(cfg=cfg, model=model, ids=ids, folder=folder, path=path, index=index, captions=caps)


def test_build_skips_corrupt_file(world):
    idx = world['index']
    assert idx.files == sorted(f'{v}.mp4' for v in world['ids'])
    assert idx.meta['skipped'] == ['corrupt.mp4']                        # counted, and not retried on update
    assert 'notes.txt' not in list_videos(world['folder'])
    assert idx.arrays['frames'].shape[:2] == (8, world['cfg'].max_frames) and idx.arrays['mask'].dtype == np.bool_


def test_round_trip(world):
    idx = world['index']
    again = VideoIndex.load(world['path'], world['model'])
    assert again.files == idx.files and again.meta == idx.meta
    for k in idx.arrays: np.testing.assert_array_equal(np.asarray(again.arrays[k]), np.asarray(idx.arrays[k]))
    assert isinstance(again.arrays['frames'], np.memmap)
    assert torch.equal(again.scores(world['captions'][:3]), idx.scores(world['captions'][:3]))


def test_refuses_foreign_model(world):
    other = GLSCL(world['cfg']).eval()
    with torch.no_grad(): next(other.lim.parameters()).add_(0.01)
    assert model_id(other) != model_id(world['model'])
    with pytest.raises(IndexMismatch, match=f"built by model {world['index'].meta['model_id']}"):
        VideoIndex.load(world['path'], other)
    with pytest.raises(FileNotFoundError, match='no index.json'):
        VideoIndex.load(world['folder'], world['model'])


def test_search_ranks_as_similarity(world):
    "The evaluation path (glscl.train's encoders, then GLSCL.similarity) and the search path rank alike."
    m, cfg, idx = world['model'], world['cfg'], world['index']
    order = [idx.files.index(f'{v}.mp4') for v in world['ids']]
    caps = world['captions']
    ref = m.similarity(encode_texts(m, caps, cfg, progress=False), encode_videos(m, world['ids'], cfg, progress=False))
    got = idx.scores(caps)[:, order]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.argsort(1, descending=True), ref.argsort(1, descending=True))
    hits = idx.search(caps[0], k=3)
    assert [h['file'] for h in hits] == [idx.files[order[j]] for j in ref[0].topk(3).indices.tolist()]
    torch.testing.assert_close(torch.tensor([h['score'] for h in hits]), ref[0].topk(3).values, atol=1e-5, rtol=1e-5)
    for h in hits:
        assert abs(sum(h['weights']) - 1) < 1e-5 and h['weights'][h['best_frame']] == max(h['weights'])


def test_score_blocks_any_block_size(world):
    idx, m = world['index'], world['model']
    t = encode_texts(m, world['captions'][:2], world['cfg'], progress=False)
    torch.testing.assert_close(score_index(m.similarity, t, idx.arrays, block=3),
                               score_index(m.similarity, t, idx.arrays), atol=1e-6, rtol=1e-6)


def test_incremental_update_and_float16(world, tmp_path):
    m = world['model']
    folder = tmp_path/'v'; folder.mkdir()
    for f in world['index'].files[:3]: (folder/f).symlink_to((world['folder']/f).resolve())
    idx = VideoIndex.build(folder, m, tmp_path/'i', dtype='float16', progress=False)
    assert len(idx) == 3 and idx.arrays['frames'].dtype == np.float16
    for f in world['index'].files[3:5]: (folder/f).symlink_to((world['folder']/f).resolve())
    r = idx.update(progress=False)
    assert (r['added'], r['skipped'], r['total']) == (2, 0, 5)
    assert idx.update(progress=False)['added'] == 0                      # nothing new: nothing encoded
    full = world['index'].scores(world['captions'][:4])
    half = VideoIndex.load(tmp_path/'i', m).scores(world['captions'][:4])
    torch.testing.assert_close(half, full[:, :5], atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match='int8'):
        VideoIndex.build(folder, m, tmp_path/'j', dtype='int4')


def test_main(world, capsys):
    assert main(['--index', str(world['path']), '-k', '2', '--preset', 'toy', world['captions'][0]]) == 0
    out = capsys.readouterr().out
    assert 'rank' in out and out.count('.mp4') == 2
    assert main(['--index', str(world['path'] / 'missing'), '--preset', 'toy', 'a query']) == 2
    assert 'no index.json' in capsys.readouterr().err


def test_one_query_path_equals_similarity(world):
    """One text takes the head's matrix-vector path (`one_query`); it equals GLSCL.similarity, whatever padded slots
    hold."""
    from glscl.heads import GLSCLSimilarity
    m, cfg, idx = world['model'], world['cfg'], world['index']
    order = [idx.files.index(f'{v}.mp4') for v in world['ids']]
    caps = world['captions'][:3]
    t_all = encode_texts(m, caps, cfg, progress=False)
    v = encode_videos(m, world['ids'], cfg, progress=False)
    ref = m.similarity(t_all, v)
    for i, c in enumerate(caps):
        torch.testing.assert_close(idx.scores(c)[0, order], ref[i], atol=1e-5, rtol=1e-5)
    g = torch.Generator().manual_seed(0)   # synthetic block: short videos, junk in the padding
    f, mask = torch.randn(5, 6, 16, generator=g), torch.arange(6)[None] < torch.tensor([[6], [3], [1], [4], [6]])
    f[~mask] = float('nan')
    q, t = torch.randn(5, 4, 16, generator=g), dict(eos=torch.randn(1, 16, generator=g),
                                                    query=torch.randn(1, 4, 16, generator=g))
    clean = torch.where(mask[..., None], f, torch.zeros(()))
    gram = clean @ clean.transpose(1, 2)
    from glscl.gim import global_interaction
    from glscl.lim import query_similarity
    want = global_interaction(t['eos'], clean, mask, temp=3.0) + 0.5 * query_similarity(t['query'], q)
    got = GLSCLSimilarity(3.0, 0.5).one_query(t, dict(frames=f, mask=mask, gram=gram, query=q))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
