"Tests of glscl.data: MSR-VTT readers, frame sampling, video writing/compression, CLIP preprocessing, tokens, datasets."
import csv
import json
import logging
import math
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import glscl.video as D
from glscl.video import (FRAME_RULES, RELEASED_AUGMENT, VideoError, augment_clip, augment_seed, clip_preprocess,
                         compress_video, compress_videos, frame_indices, sample_frames, write_video)
from glscl.data import MSRVTT_FILES, VideoDataset, VideoTextDataset, collate_videos, load_video, read_msrvtt, tokenize
from glscl.presetdata import dataset_from_config, videos_from_config


# ---------------------------------------------------------------- annotations in the exact MSR-VTT formats
def write_anno(d: Path, n_videos=5, caps_per_video=3):
    "video0..4; 9k train = video0-3, 7k train = video0-1, test csv = one row per caption of video4."
    d.mkdir(parents=True, exist_ok=True)
    sents, sen_id = [], 0
    for j in range(caps_per_video):                  # interleaved, as in the real json
        for i in range(n_videos):
            sents.append({"caption": f"cap {j} of video{i}", "video_id": f"video{i}", "sen_id": sen_id}); sen_id += 1
    videos = [{"category": i % 20, "url": f"https://youtube/{i}", "video_id": f"video{i}", "start time": 1.0,
               "end time": 11.0, "split": "train", "id": i} for i in range(n_videos)]
    # the json lists test videos too
    videos += [{"video_id": f"video{9770 + r}", "split": "test", "id": 9770 + r} for r in range(3)]
    (d / "MSRVTT_data.json").write_text(json.dumps({"info": {"year": 2016}, "videos": videos, "sentences": sents}))
    for name, ids in (("MSRVTT_train.9k.csv", [0, 1, 2, 3]), ("MSRVTT_train.7k.csv", [0, 1])):
        with open(d / name, "w", newline="") as f:
            w = csv.writer(f); w.writerow(["video_id"]); w.writerows([[f"video{i}"] for i in ids])
    with open(d / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.writer(f); w.writerow(["key", "vid_key", "video_id", "sentence"])
        w.writerows([[f"ret{r}", f"msr{9770 + r}", f"video{9770 + r}", f"a person, is doing thing {r}"]
                     for r in range(3)])
    return d


@pytest.fixture
def anno(tmp_path): return write_anno(tmp_path / "anno")


def test_files_names():
    assert MSRVTT_FILES == dict(data="MSRVTT_data.json", train="MSRVTT_train.9k.csv",
                                train7k="MSRVTT_train.7k.csv", test="MSRVTT_JSFUSION_test.csv")


def test_read_train_splits(anno):
    train, train7k = read_msrvtt(anno, "train"), read_msrvtt(str(anno), "train7k")
    # reference: json order, filtered by the csv's ids
    sents = json.loads((anno / "MSRVTT_data.json").read_text())["sentences"]
    ref9 = [(s["video_id"], s["caption"]) for s in sents if s["video_id"] in {f"video{i}" for i in range(4)}]
    ref7 = [(s["video_id"], s["caption"]) for s in sents if s["video_id"] in {"video0", "video1"}]
    assert (train == ref9 and len(train) == 12
            and train[:2] == [("video0", "cap 0 of video0"), ("video1", "cap 0 of video1")])
    assert train7k == ref7 and len(train7k) == 6
    assert all(isinstance(v, str) and isinstance(c, str) for v, c in train)


def test_read_test_split(anno):
    test = read_msrvtt(anno, "test")
    assert test == [(f"video{9770 + r}", f"a person, is doing thing {r}") for r in range(3)]   # comma inside quotes


def test_bad_split(anno):
    with pytest.raises(ValueError, match="valid splits"): read_msrvtt(anno, "val")


def test_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError) as e: read_msrvtt(tmp_path / "nope", "train")
    assert str(tmp_path / "nope") in str(e.value) and "msrvtt_data.zip" in str(e.value) and "toy" in str(e.value)


@pytest.mark.parametrize("split,key", [("train", "train"), ("train", "data"), ("train7k", "train7k"), ("test", "test")])
def test_missing_file(anno, split, key):
    (anno / MSRVTT_FILES[key]).unlink()
    with pytest.raises(FileNotFoundError) as e: read_msrvtt(anno, split)
    assert MSRVTT_FILES[key] in str(e.value) and "msrvtt_data.zip" in str(e.value)


def test_bad_headers(anno):
    (anno / "MSRVTT_train.9k.csv").write_text("vid\nvideo0\n")
    with pytest.raises(ValueError) as e: read_msrvtt(anno, "train")
    assert "MSRVTT_train.9k.csv" in str(e.value) and "video_id" in str(e.value) and "vid" in str(e.value)
    (anno / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video,caption\nret0,msr1,video1,x\n")
    with pytest.raises(ValueError) as e: read_msrvtt(anno, "test")
    assert "MSRVTT_JSFUSION_test.csv" in str(e.value) and "sentence" in str(e.value) and "caption" in str(e.value)


def test_empty_caption_json(anno):
    data = json.loads((anno / "MSRVTT_data.json").read_text())
    data["sentences"][6]["caption"] = "   "
    (anno / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as e: read_msrvtt(anno, "train")
    assert "MSRVTT_data.json" in str(e.value) and "sen_id 6" in str(e.value)


def test_empty_sentence_test_csv(anno):
    (anno / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr1,video1,ok\nret1,msr2,video2,\n")
    with pytest.raises(ValueError) as e: read_msrvtt(anno, "test")
    assert "MSRVTT_JSFUSION_test.csv" in str(e.value) and "line 3" in str(e.value) and "ret1" in str(e.value)


def test_train_id_without_caption(anno):
    (anno / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo77\n")
    with pytest.raises(ValueError, match="video77"): read_msrvtt(anno, "train")


def test_corrupt_json(anno):
    (anno / "MSRVTT_data.json").write_text('{"videos": [')
    with pytest.raises(ValueError, match="MSRVTT_data.json"): read_msrvtt(anno, "train")


# ---------------------------------------------------------------- frame indices
def ref_frame_indices(n_frames, video_fps, max_frames, fps):
    idx, k = [], 0
    while True:
        i = int(math.floor(k * video_fps / fps))
        if i >= n_frames: break
        if not idx or i != idx[-1]: idx.append(i)   # i never decreases, so repeats are neighbours
        k += 1
    if len(idx) > max_frames:
        idx = [idx[int(round(p))] for p in np.linspace(0, len(idx) - 1, max_frames)]
    return idx


@pytest.mark.parametrize("video_fps", [1.0, 3.0, 4.0, 23.976, 25.0, 29.97, 30.0, 60.0])
def test_frame_indices_reference(video_fps):
    for n in [1, 2, 3, 7, 29, 30, 31, 90, 299, 300, 301, 1000, 5000]:
        for max_frames in [1, 2, 5, 12, 64]:
            for fps in [0.5, 1.0, 2.0, 3.0, 10.0]:
                got = frame_indices(n, video_fps, max_frames, fps)
                ref = ref_frame_indices(n, video_fps, max_frames, fps)
                assert got.tolist() == ref, (n, video_fps, max_frames, fps)
                assert 1 <= len(got) <= max_frames and np.all(np.diff(got) > 0) and got[-1] < n
                assert np.issubdtype(got.dtype, np.integer)


def test_frame_indices_examples():
    assert frame_indices(40, 4.0).tolist() == list(range(0, 40, 4))
    assert frame_indices(40, 4.0, max_frames=6).tolist() == [0, 8, 16, 20, 28, 36]
    assert frame_indices(1, 30.0).tolist() == [0]


@pytest.mark.parametrize("args", [(0, 30.0), (10, 0.0), (10, float("nan")), (10, 30.0, 0), (10, 30.0, 12, -1.0)])
@pytest.mark.parametrize("rule", FRAME_RULES)
def test_frame_indices_bad_args(args, rule):
    with pytest.raises(ValueError): frame_indices(*args, rule=rule)


def ref_released(n_frames, video_fps, max_frames, fps):
    "The released rule, spelled out: every stride-th frame, thinned at linspace positions cast to int (truncated)."
    stride = max(1, int(round(video_fps / fps)))
    pos, i = [], 0
    while i < n_frames: pos.append(i); i += stride
    if len(pos) > max_frames:
        if max_frames == 1: return [pos[0]]
        step = (len(pos) - 1) / (max_frames - 1)                 # numpy's linspace: j * step, the end exact
        pos = [pos[int(j * step)] for j in range(max_frames - 1)] + [pos[-1]]
    return pos


@pytest.mark.parametrize("video_fps", [0.3, 0.5, 1.0, 3.0, 4.0, 23.976, 25.0, 29.97, 30.0, 59.94, 60.0])
def test_frame_indices_released_reference(video_fps):
    for n in [1, 2, 3, 7, 29, 30, 31, 90, 299, 300, 301, 1000, 5000]:
        for max_frames in [1, 2, 5, 12, 23, 64]:
            for fps in [0.5, 1.0, 2.0, 3.0, 10.0]:
                got = frame_indices(n, video_fps, max_frames, fps, rule="released")
                assert got.tolist() == ref_released(n, video_fps, max_frames, fps), (n, video_fps, max_frames, fps)
                assert 1 <= len(got) <= max_frames and np.all(np.diff(got) > 0) and got[-1] < n and got[0] == 0
                assert np.issubdtype(got.dtype, np.integer)


def test_frame_indices_released_examples():
    r = lambda *a, **k: frame_indices(*a, rule="released", **k).tolist()
    assert r(300, 29.97) == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]                  # 10 frames ...
    assert frame_indices(300, 29.97).tolist() == [0, 29, 59, 89, 119, 149, 179, 209, 239, 269, 299]   # ... not 11
    # 20 s at 30 fps: 20 positions 0, 30, ..., 570 thinned at linspace(0, 19, 12) = 0, 1.73, 3.45, ... truncated
    assert r(600, 30.0) == [0, 30, 90, 150, 180, 240, 300, 360, 390, 450, 510, 570]
    assert frame_indices(600, 30.0).tolist() == [0, 60, 90, 150, 210, 270, 300, 360, 420, 480, 510, 570]  # rounded
    assert r(5, 0.4) == [0, 1, 2, 3, 4]   # video slower than 1 fps: stride max(1, round(0.4)) = 1
    assert r(10, 0.6) == list(range(10))                          # round(0.6) = 1
    assert r(40, 4.0) == list(range(0, 40, 4)) == frame_indices(40, 4.0).tolist()   # whole stride, no thinning: equal
    assert r(40, 4.0, max_frames=6) == [0, 4, 12, 20, 28, 36]    # linspace(0, 9, 6) = 0, 1.8, 3.6, 5.4, 7.2, 9
    assert r(100, 25.0, fps=2.0) == list(range(0, 100, 12))       # round(12.5) = 12 (Python rounds half to even)
    assert r(100, 27.0, fps=2.0) == list(range(0, 100, 14))       # round(13.5) = 14
    assert r(1, 30.0) == [0] and r(1000, 30.0, max_frames=1) == [0]
    # numpy's float linspace: position 11 of linspace(0, 30, 23) is 14.999..., truncated to 14 (exactly: 15)
    assert r(31, 1.0, max_frames=23)[11] == 14
    # at max_frames = 12 (divisor 11, a prime) the float positions equal the exact ones for every length
    for n in range(13, 3000):
        assert r(n, 1.0) == [j * (n - 1) // 11 for j in range(12)], n


def test_frame_indices_unknown_rule():
    with pytest.raises(ValueError) as e: frame_indices(300, 29.97, rule="clip4clip")
    assert "clip4clip" in str(e.value) and "glscl" in str(e.value) and "released" in str(e.value)


# ---------------------------------------------------------------- real mp4 files
def counting_frames(n=40, h=32, w=64, step=5):
    "Frame k has brightness step*k everywhere: decoded frames say which one they are."
    return np.stack([np.full((h, w, 3), step * k, np.uint8) for k in range(n)])


def decoded_index(frames, step=5): return np.round(frames.reshape(len(frames), -1).mean(1) / step).astype(int).tolist()


@pytest.fixture(scope="module")
def count_mp4(tmp_path_factory):
    p = tmp_path_factory.mktemp("vid") / "count.mp4"
    write_video(p, counting_frames(), fps=4)
    return p


def test_write_video_roundtrip(count_mp4):
    with av.open(str(count_mp4)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height, float(s.average_rate)) == ("h264", 64, 32, 4.0)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    assert len(frames) == 40 and decoded_index(np.stack(frames)) == list(range(40))
    assert [p.name for p in count_mp4.parent.iterdir()] == ["count.mp4"]        # no temporary left


def test_sample_frames_counts_and_order(count_mp4):
    frames, mask = sample_frames(count_mp4)                   # 10 s at 4 fps, 1 fps -> 10 frames of 12 slots
    assert frames.dtype == np.uint8 and frames.shape == (10, 32, 64, 3)
    assert decoded_index(frames) == list(range(0, 40, 4))
    assert mask.dtype == np.bool_ and mask.tolist() == [True] * 10 + [False] * 2
    frames, mask = sample_frames(count_mp4, max_frames=5, fps=2.0)   # 20 candidates thinned to 5
    assert decoded_index(frames) == frame_indices(40, 4.0, 5, 2.0).tolist() == [0, 10, 20, 28, 38]
    assert mask.tolist() == [True] * 5


class SpyReader:
    "Wraps decord.VideoReader; records get_batch calls and allows nothing else."
    calls, fps, shape_hack = [], None, False
    def __init__(self, *a, **k):
        self._vr = SpyReader.real(*a, **k)
    def __len__(self): return len(self._vr)
    def get_avg_fps(self): return self._vr.get_avg_fps() if SpyReader.fps is None else SpyReader.fps
    def get_batch(self, idx):
        SpyReader.calls.append(list(idx))
        out = self._vr.get_batch(idx)
        return SimpleNamespace(asnumpy=lambda: out.asnumpy()[:, :, :, :2]) if SpyReader.shape_hack else out


@pytest.fixture
def spy(monkeypatch):
    decord = pytest.importorskip("decord")   # no decord wheel on macOS / aarch64: PyAV reads there
    SpyReader.real, SpyReader.calls, SpyReader.fps, SpyReader.shape_hack = decord.VideoReader, [], None, False
    monkeypatch.setattr(decord, "VideoReader", SpyReader)
    return SpyReader


def test_sample_frames_decodes_only_chosen(count_mp4, spy):
    frames, mask = sample_frames(count_mp4, max_frames=4)
    assert spy.calls == [frame_indices(40, 4.0, 4).tolist()] == [[0, 12, 24, 36]]
    assert len(frames) == 4


def test_sample_frames_bad_fps_and_shape(count_mp4, spy):
    spy.fps = 0.0
    with pytest.raises(VideoError, match="count.mp4"): sample_frames(count_mp4)
    spy.fps, spy.shape_hack = None, True
    with pytest.raises(VideoError, match="count.mp4"): sample_frames(count_mp4)


def test_sample_frames_missing_empty_truncated_garbage(tmp_path, count_mp4):
    with pytest.raises(FileNotFoundError, match="nothere.mp4"): sample_frames(tmp_path / "nothere.mp4")
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(VideoError, match="empty.mp4"): sample_frames(tmp_path / "empty.mp4")
    data = count_mp4.read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="half.mp4") as e: sample_frames(tmp_path / "half.mp4")
    assert "compress_videos" in str(e.value) and isinstance(e.value, ValueError)
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match="junk.mp4"): sample_frames(tmp_path / "junk.mp4")


def test_sample_frames_released(tmp_path, count_mp4):
    p = write_video(tmp_path / "ntsc.mp4", counting_frames(51), fps=29.97)   # 1.7 s at 29.97 fps
    frames, mask = sample_frames(p, rule="released")
    assert decoded_index(frames) == frame_indices(51, 29.97, rule="released").tolist() == [0, 30]
    assert decoded_index(sample_frames(p)[0]) == [0, 29]                      # our rule: floor(29.97)
    assert mask.tolist() == [True] * 2 + [False] * 10
    assert decoded_index(sample_frames(count_mp4, max_frames=6, rule="released")[0]) == [0, 4, 12, 20, 28, 36]
    with pytest.raises(ValueError, match="released"): sample_frames(p, rule="nope")


def toy_video(tmp_path_factory):
    "A video of the toy world: data/toy's, or a small world drawn into a temporary folder."
    p = Path(__file__).resolve().parents[1] / "data" / "toy" / "videos" / "video0.mp4"
    if p.is_file(): return p
    from glscl.toyworld import make_toy_msrvtt
    return make_toy_msrvtt(tmp_path_factory.mktemp("toy"), n_videos=4, seed=0) / "videos" / "video0.mp4"


@pytest.mark.parametrize("max_frames,fps", [(12, 1.0), (5, 1.0), (8, 3.0)])
def test_sample_frames_released_toy(tmp_path_factory, max_frames, fps):
    decord = pytest.importorskip("decord")
    p = toy_video(tmp_path_factory)
    vr = decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1)
    every = vr.get_batch(list(range(len(vr)))).asnumpy()                     # decode every frame
    idx = frame_indices(len(vr), float(vr.get_avg_fps()), max_frames, fps, rule="released")
    frames, mask = sample_frames(p, max_frames, fps, rule="released")
    assert np.array_equal(frames, every[idx]) and mask.sum() == len(idx) and len(mask) == max_frames


def test_write_video_errors(tmp_path):
    with pytest.raises(ValueError, match="even"): write_video(tmp_path / "a.mp4", np.zeros((2, 31, 64, 3), np.uint8), 4)
    with pytest.raises(ValueError, match="uint8"): write_video(tmp_path / "a.mp4", np.zeros((2, 32, 64, 3)), 4)
    with pytest.raises(ValueError, match="n,H,W,3"): write_video(tmp_path / "a.mp4", np.zeros((32, 64, 3), np.uint8), 4)
    with pytest.raises(ValueError, match="fps"): write_video(tmp_path / "a.mp4", np.zeros((2, 32, 64, 3), np.uint8), 0)
    assert list(tmp_path.iterdir()) == []


def test_write_video_atomic(tmp_path):
    p = tmp_path / "v.mp4"
    write_video(p, counting_frames(8), fps=4)
    before = p.read_bytes()
    def failing():                                   # the encoder dies after a few frames
        for k, f in enumerate(counting_frames(8, step=20)):
            if k == 5: raise RuntimeError("disk on fire")
            yield f
    with pytest.raises(RuntimeError, match="disk on fire"): D._write_h264(p, failing(), 4)
    assert [q.name for q in tmp_path.iterdir()] == ["v.mp4"] and p.read_bytes() == before   # old file intact
    with pytest.raises(RuntimeError): D._write_h264(tmp_path / "new.mp4", failing(), 4)
    assert not (tmp_path / "new.mp4").exists() and [q.name for q in tmp_path.iterdir()] == ["v.mp4"]
    write_video(tmp_path / "f.mp4", counting_frames(6), fps=29.97)    # non-integer rate as a Fraction
    with av.open(str(tmp_path / "f.mp4")) as c: assert abs(float(c.streams.video[0].average_rate) - 29.97) < 1e-3


# ---------------------------------------------------------------- compression
def read_all(p):
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)]), float(s.average_rate)


def test_compress_video(tmp_path):
    src = tmp_path / "src.mp4"
    write_video(src, counting_frames(24, h=64, w=128, step=10), fps=12)     # 2 s at 12 fps, frame k = 10k
    compress_video(src, tmp_path / "out" / "dst.mp4", fps=3, short_side=32)
    frames, rate = read_all(tmp_path / "out" / "dst.mp4")
    assert rate == 3.0 and frames.shape == (6, 32, 64, 3)                     # 2 s at 3 fps, aspect 1:2 kept
    assert decoded_index(frames, step=10) == [0, 4, 8, 12, 16, 20]           # the frame shown at each tick k/3 s
    vr_frames, _ = sample_frames(tmp_path / "out" / "dst.mp4", max_frames=12, fps=1.0)
    assert len(vr_frames) == 2
    write_video(tmp_path / "p.mp4", counting_frames(6, h=90, w=50), fps=3)
    compress_video(tmp_path / "p.mp4", tmp_path / "p2.mp4", fps=3, short_side=20)
    assert read_all(tmp_path / "p2.mp4")[0].shape[1:] == (36, 20, 3)       # 90x50 -> 36x20, even
    with pytest.raises(ValueError, match="short_side"): compress_video(src, tmp_path / "x.mp4", short_side=31)


def test_compress_videos(tmp_path, caplog):
    src_dir, dst_dir = tmp_path / "raw", tmp_path / "small"
    for i in range(2): write_video(src_dir / f"video{i}.mp4", counting_frames(8, h=64, w=128), fps=4)
    (src_dir / "video9.avi").write_bytes(b"garbage" * 50)
    (src_dir / "notes.txt").write_text("not a video")
    with caplog.at_level(logging.WARNING, logger="glscl.data"):
        res = compress_videos(src_dir, dst_dir, fps=3, short_side=32)
    assert res["done"] == 2 and res["skipped"] == 0 and res["failed"] == [str(src_dir / "video9.avi")]
    assert "video9.avi" in caplog.text
    assert sorted(p.name for p in dst_dir.iterdir()) == ["video0.mp4", "video1.mp4"]     # nothing half-written
    assert compress_videos(src_dir, dst_dir, fps=3, short_side=32)["skipped"] == 2
    res = compress_videos(src_dir, dst_dir, fps=3, short_side=32, overwrite=True)
    assert (res["done"], res["skipped"], len(res["failed"])) == (2, 0, 1)
    with pytest.raises(ValueError): compress_videos(src_dir, src_dir)
    with pytest.raises(FileNotFoundError): compress_videos(tmp_path / "nope", dst_dir)


# ---------------------------------------------------------------- CLIP preprocessing
def smooth_image(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 / w, yy * 255 / h,
                     128 + 90 * np.sin(xx / 7) * np.cos(yy / 9)], -1).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("h,w,S", [(120, 160, 64), (161, 97, 64), (240, 320, 224), (64, 64, 64), (90, 120, 96)])
def test_clip_preprocess_vs_open_clip(h, w, S):
    import open_clip
    from PIL import Image
    rng = np.random.default_rng(h * w)
    imgs = [smooth_image(h, w), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)]
    ours = clip_preprocess(np.stack(imgs), S)
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, S, S)
    tf = open_clip.image_transform(S, is_train=False)
    for k, img in enumerate(imgs):
        ref = tf(Image.fromarray(img))
        # one grey level is 1/(255*std) ~ 0.015 after normalisation: stay under it on average
        assert (ours[k] - ref).abs().mean() < 0.01
        if k == 0: assert (ours[k] - ref).abs().max() < 0.05
    assert torch.equal(clip_preprocess(torch.from_numpy(np.stack(imgs)), S), ours)     # tensors too


def test_clip_preprocess_errors():
    with pytest.raises(ValueError, match="n,H,W,3"): clip_preprocess(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"): clip_preprocess(np.zeros((1, 32, 32, 3), np.float32))


def test_mean_std():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    assert tuple(D.OPENAI_MEAN) == tuple(OPENAI_DATASET_MEAN) and tuple(D.OPENAI_STD) == tuple(OPENAI_DATASET_STD)


# ---------------------------------------------------------------- tokens
def test_tokenize():
    import open_clip
    caps = ["a man is driving a red car", "a " + "very " * 60 + "long caption", "wow!! look"]
    ids, mask = tokenize(caps, max_words=16)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (3, 16)
    ref = open_clip.get_tokenizer("ViT-B-32")(caps, context_length=16)
    assert torch.equal(ids, ref)
    for b in range(3):
        n = int(mask[b].sum())
        assert ids[b, 0] == 49406 and ids[b, n - 1] == 49407 and (ids[b, n:] == 0).all()
        assert mask[b, :n].all() and not mask[b, n:].any()
    assert mask[1].all() and ids[1, -1] == 49407                 # truncated: end token at max_words-1
    assert mask[0].sum() == 9 and torch.equal(mask[0], ids[0] != 0)
    ids1, mask1 = tokenize("a man is driving a red car", max_words=16)
    assert torch.equal(ids1[0], ids[0]) and ids1.shape == (1, 16)
    assert tokenize(caps[0])[0].shape == (1, 32)


@pytest.mark.parametrize("bad", [[""], ["ok", "   "], ["ok", None], ["ok", 3]])
def test_tokenize_bad_caption(bad):
    with pytest.raises(ValueError) as e: tokenize(bad)
    assert f"caption {len(bad) - 1}" in str(e.value) and repr(bad[-1]) in str(e.value)


def test_tokenize_bad_max_words():
    with pytest.raises(ValueError, match="max_words"): tokenize("a dog", max_words=2)


# ---------------------------------------------------------------- datasets and collate
@pytest.fixture
def world(tmp_path):
    anno = write_anno(tmp_path / "anno")
    vids = tmp_path / "videos"
    write_video(vids / "video0.mp4", counting_frames(24), fps=4)      # 6 s -> 6 frames
    write_video(vids / "video1.mp4", counting_frames(12), fps=4)      # 3 s -> 3 frames
    write_video(vids / "video2.mp4", counting_frames(40), fps=4)      # 10 s -> thinned to 8
    (vids / "video3.mp4").write_bytes(b"")                             # empty file: skipped
    return anno, vids


def test_video_text_dataset(world, caplog):
    anno, vids = world
    ds = VideoTextDataset(read_msrvtt(anno, "train"), vids, max_words=16, max_frames=8, image_size=32)
    assert len(ds) == 12 and ds.video_ids == ["video0", "video1", "video2", "video3"]
    assert ds.video_index == [0, 1, 2, 3] * 3
    it = ds[4]
    assert it["ids"].shape == it["mask"].shape == (16,) and it["frames"].shape == (6, 3, 32, 32)
    assert it["frame_mask"].tolist() == [True] * 6 + [False] * 2 and it["frames"].dtype == torch.float32
    assert it["index"] == 4 and it["video_index"] == 0
    with caplog.at_level(logging.WARNING, logger="glscl.data"):
        items = [ds[i] for i in range(4)]
    assert items[3] is None and ds.n_skipped == 1 and "video3.mp4" in caplog.text
    batch = collate_videos(items)
    assert (batch["n_skipped"] == 1 and batch["index"].tolist() == [0, 1, 2]
            and batch["video_index"].tolist() == [0, 1, 2])
    assert (batch["frames"].shape == (3, 8, 3, 32, 32) and batch["ids"].shape == (3, 16)
            and batch["mask"].dtype == torch.bool)
    assert batch["frame_mask"].sum(1).tolist() == [6, 3, 8]
    assert batch["frames"][1, 3:].abs().sum() == 0 and batch["frames"][1, :3].abs().sum() > 0
    frames, fmask = load_video(vids / "video1.mp4", max_frames=8, image_size=32)
    assert torch.equal(batch["frames"][1, :3], frames) and fmask.sum() == 3


def test_dataset_missing_video_logged(world, caplog):
    anno, vids = world
    ds = VideoTextDataset([("video0", "good"), ("video42", "never downloaded"), ("video1", "good too")],
                          vids, image_size=32)
    with caplog.at_level(logging.WARNING, logger="glscl.data"):
        batch = collate_videos([ds[i] for i in range(3)])
    assert ds.n_skipped == 1 and "video42.mp4" in caplog.text
    assert batch["n_skipped"] == 1 and batch["index"].tolist() == [0, 2]
    dl = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_videos)
    assert next(iter(dl))["n_skipped"] == 1


def test_dataset_errors(world):
    anno, vids = world
    with pytest.raises(ValueError, match="empty after cleaning"): VideoTextDataset([("video0", " ")], vids)
    with pytest.raises(FileNotFoundError): VideoTextDataset([("video0", "x")], vids / "nope")
    with pytest.raises(ValueError, match="unique"): VideoDataset(["video0", "video0"], vids)


def test_from_config(world):
    anno, vids = world
    cfg = SimpleNamespace(anno_dir=anno, video_dir=vids, max_words=20, max_frames=4, fps=1.0, image_size=32)
    ds = dataset_from_config(cfg, "train7k")
    assert len(ds) == 6 and ds.video_ids == ["video0", "video1"]
    it = ds[0]
    assert it["ids"].shape == (20,) and it["frames"].shape == (4, 3, 32, 32) and it["frame_mask"].shape == (4,)


def test_video_dataset(world, caplog):
    anno, vids = world
    ds = VideoDataset(["video1", "video3", "video0"], vids, max_frames=8, image_size=32)
    with caplog.at_level(logging.WARNING, logger="glscl.data"):
        batch = collate_videos([ds[j] for j in range(len(ds))])
    assert ds.n_skipped == 1 and "video3.mp4" in caplog.text
    assert set(batch) == {"frames", "frame_mask", "video_index", "n_skipped", "size"}
    assert batch["video_index"].tolist() == [0, 2] and batch["frames"].shape == (2, 6, 3, 32, 32)
    assert batch["frame_mask"].tolist() == [[True] * 3 + [False] * 3, [True] * 6]


def test_collate_synthetic():
    torch.manual_seed(0)
    def item(n, i, M=5):
        fm = torch.zeros(M, dtype=torch.bool); fm[:n] = True
        return dict(ids=torch.full((7,), i), mask=torch.ones(7, dtype=torch.bool), frames=torch.randn(n, 3, 4, 4),
                    frame_mask=fm, index=i, video_index=10 + i)
    items = [item(2, 0), None, item(4, 2), item(1, 3), None]
    b = collate_videos(items)
    assert b["n_skipped"] == 2 and b["frames"].shape == (3, 4, 3, 4, 4) and b["frame_mask"].shape == (3, 4)
    for r, it in enumerate([items[0], items[2], items[3]]):          # reference: per-item copy and zero padding
        n = it["frames"].shape[0]
        assert torch.equal(b["frames"][r, :n], it["frames"]) and (b["frames"][r, n:] == 0).all()
        assert b["frame_mask"][r].tolist() == [True] * n + [False] * (4 - n)
    assert (b["index"].tolist() == [0, 2, 3] and b["video_index"].tolist() == [10, 12, 13]
            and b["index"].dtype == torch.long)
    assert torch.equal(b["ids"][:, 0], torch.tensor([0, 2, 3]))
    assert collate_videos([None, None]) == dict(size=0, n_skipped=2)          # an all-bad batch: counted, never None


# ---------------------------------------------------------------- RandAugment on whole clips
def moving_clip(n=5, h=48, w=64):
    "A textured picture sliding right one pixel a frame: different frames, one scene."
    base = smooth_image(h, w + n)
    return np.stack([base[:, k:k + w] for k in range(n)])


def rng_states(): return random.getstate(), np.random.get_state()


def same_states(a, b):
    return (a[0] == b[0]
            and all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
                    for x, y in zip(a[1], b[1], strict=False)))


def reference_augment(frames, spec, seed, image_size):
    "timm's transform on each frame alone, after seeding both global RNGs with `seed`."
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform
    tf = rand_augment_transform(spec, dict(translate_const=int(image_size * 0.45), img_mean=(128, 128, 128),
                                           interpolation=Image.BICUBIC))
    out = []
    for f in frames:
        random.seed(seed); np.random.seed(seed)
        out.append(np.asarray(tf(Image.fromarray(f))))
    return np.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 7, 12345, 2**32 - 1])
def test_augment_clip_equals_per_frame_reference(seed):
    clip = moving_clip()
    before = rng_states()
    out = augment_clip(clip, RELEASED_AUGMENT, seed, image_size=64)
    assert same_states(rng_states(), before)                                  # global RNGs untouched
    assert out.dtype == np.uint8 and out.shape == clip.shape
    saved = rng_states()
    try: ref = reference_augment(clip, RELEASED_AUGMENT, seed, 64)
    finally: random.setstate(saved[0]); np.random.set_state(saved[1])
    assert np.array_equal(out, ref)


def test_augment_clip_same_ops_every_frame():
    frame = smooth_image(48, 64)
    clip = np.repeat(frame[None], 6, axis=0)
    changed = 0
    for seed in range(20):
        out = augment_clip(clip, RELEASED_AUGMENT, seed, image_size=64)
        assert all(np.array_equal(o, out[0]) for o in out), seed            # identical frames stay identical
        changed += not np.array_equal(out[0], frame)
    assert changed >= 15                                                     # ~15/16 of draws apply some op


def test_augment_clip_deterministic_and_seed_dependent():
    clip = moving_clip()
    a = augment_clip(clip, RELEASED_AUGMENT, 3, image_size=64)
    assert np.array_equal(a, augment_clip(clip.copy(), RELEASED_AUGMENT, 3, image_size=64))
    random.seed(99); np.random.seed(99)                                      # the caller's state does not matter
    assert np.array_equal(a, augment_clip(clip, RELEASED_AUGMENT, 3, image_size=64))
    assert any(not np.array_equal(a, augment_clip(clip, RELEASED_AUGMENT, s, image_size=64)) for s in range(4, 8))
    assert np.array_equal(clip, moving_clip())                               # input not modified


def test_augment_clip_restores_state_on_error(monkeypatch):
    before = rng_states()
    def boom(spec, size):
        def tf(img):
            random.random(); np.random.rand()
            raise RuntimeError("op failed")
        return tf
    import glscl.pixels as P
    monkeypatch.setattr(P, "_rand_augment", boom)                           # augment_clip looks it up in glscl.pixels
    with pytest.raises(RuntimeError, match="op failed"): augment_clip(moving_clip(), RELEASED_AUGMENT, 0, 64)
    assert same_states(rng_states(), before)


def test_augment_clip_errors():
    clip = moving_clip()
    with pytest.raises(ValueError, match="uint8"): augment_clip(clip.astype(np.float32), RELEASED_AUGMENT, 0, 64)
    with pytest.raises(ValueError, match="n,H,W,3"): augment_clip(clip[0], RELEASED_AUGMENT, 0, 64)
    for bad in (-1, 2**32, 1.5):
        with pytest.raises(ValueError, match="seed"): augment_clip(clip, RELEASED_AUGMENT, bad, 64)
    with pytest.raises(ValueError, match="RandAugment spec"): augment_clip(clip, "randaug-wrong", 0, 64)


def test_augment_seed():
    s = augment_seed(0, 1, 2)
    assert s == int(np.random.SeedSequence([0, 1, 2]).generate_state(1)[0]) and isinstance(s, int) and 0 <= s < 2**32
    assert len({augment_seed(0, e, i) for e in range(3) for i in range(50)}) == 150


# ---------------------------------------------------------------- datasets with frame sampling and augmentation
@pytest.fixture
def textured_world(tmp_path):
    "Two textured videos (augmentation visibly changes them) at 29.97 fps, so the sampling rules differ."
    vids = tmp_path / "tv"
    write_video(vids / "v0.mp4",
                np.stack([smooth_image(48, 64)] * 4 + [255 - smooth_image(48, 64)] * 30
                         + [smooth_image(48, 64)] * 40), fps=29.97)
    write_video(vids / "v1.mp4", moving_clip(70, 48, 64), fps=29.97)
    return vids


def test_dataset_no_augment_by_default(textured_world):
    pairs = [("v0", "a clip"), ("v1", "another clip")]
    ds = VideoTextDataset(pairs, textured_world, max_frames=4, image_size=32)
    assert ds.augment is None
    for i, (v, _) in enumerate(pairs):
        raw, mask = sample_frames(textured_world / f"{v}.mp4", 4)
        a, b = ds[i], ds[i]
        assert torch.equal(a["frames"], clip_preprocess(raw, 32)) and torch.equal(a["frames"], b["frames"])
        ds.set_epoch(i + 1)                                                   # no effect without augment
        assert torch.equal(ds[i]["frames"], a["frames"]) and a["frame_mask"].tolist() == mask.tolist()
    vds = VideoDataset(["v0", "v1"], textured_world, max_frames=4, image_size=32)
    assert vds.augment is None and torch.equal(vds[0]["frames"], ds[0]["frames"])


def test_dataset_augment_per_seed_epoch_index(textured_world):
    pairs = [("v0", "a clip"), ("v1", "another clip"), ("v0", "a clip again")]
    mk = lambda seed=0: VideoTextDataset(pairs, textured_world, max_frames=4, image_size=32,
                                         augment=RELEASED_AUGMENT, seed=seed)
    ds = mk()
    raw = {v: sample_frames(textured_world / f"{v}.mp4", 4)[0] for v in ("v0", "v1")}
    plain = {v: clip_preprocess(f, 32) for v, f in raw.items()}
    seen = {}
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i, (v, _) in enumerate(pairs):
            want = clip_preprocess(augment_clip(raw[v], RELEASED_AUGMENT, augment_seed(0, epoch, i), 32), 32)
            got = ds[i]["frames"]
            assert torch.equal(got, want), (epoch, i)
            seen[epoch, i] = got
    assert any(not torch.equal(seen[e, i], plain[pairs[i][0]]) for e in range(3) for i in range(3))   # augmented
    assert any(not torch.equal(seen[0, i], seen[e, i]) for e in (1, 2) for i in range(3))             # per epoch
    assert not torch.equal(seen[0, 0], seen[0, 2])                     # per index: the same video, another draw
    other = mk(); other.memo = {}; other.set_epoch(2)                     # a fresh copy (another worker or rank)
    assert all(torch.equal(other[i]["frames"], seen[2, i]) for i in (2, 0, 1))
    assert all(torch.equal(other[i]["frames"], seen[2, i]) for i in (1, 2, 0))         # order and memo do not matter
    seeded = mk(seed=1)
    assert any(not torch.equal(seeded[i]["frames"], seen[0, i]) for i in range(3))
    with pytest.raises(ValueError, match="epoch"): ds.set_epoch(-1)


def test_dataset_augment_in_dataloader_workers(textured_world):
    pairs = [("v0", "a"), ("v1", "b"), ("v0", "c"), ("v1", "d")]
    ds = VideoTextDataset(pairs, textured_world, max_frames=4, image_size=32, augment=RELEASED_AUGMENT, seed=5)
    ds.set_epoch(3)
    ref = collate_videos([ds[i] for i in range(4)])
    dl = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_videos, num_workers=2)
    got = next(iter(dl))
    assert torch.equal(got["frames"], ref["frames"])


def test_memo_holds_raw_frames(textured_world):
    pairs = [("v0", "a clip"), ("v1", "another"), ("v0", "again"), ("gone", "never downloaded")]
    ds = VideoTextDataset(pairs, textured_world, max_frames=4, image_size=32, augment=RELEASED_AUGMENT, memo={})
    items = [ds[i] for i in range(4)]
    videos = lambda: {k: v for k, v in ds.memo.items() if k[0] != 'tokens'}
    assert items[3] is None and ds.n_skipped == 1 and len(videos()) == 2     # unreadable videos are not memoised
    # and each caption's tokens, as tokenize gives them
    tokens = {k[1]: v for k, v in ds.memo.items() if k[0] == 'tokens'}
    assert sorted(tokens) == ['a clip', 'again', 'another']
    for c, (ids, m) in tokens.items(): assert torch.equal(ids, tokenize(c)[0][0]) and torch.equal(m, tokenize(c)[1][0])
    for key, (frames, mask) in videos().items():
        v = Path(key[0]).stem
        raw, m = sample_frames(textured_world / f"{v}.mp4", 4)
        assert frames.dtype == np.uint8 and np.array_equal(frames, raw) and np.array_equal(mask, m)
    memo_copy = {k: v[0].copy() for k, v in videos().items()}
    ds.set_epoch(1); [ds[i] for i in range(3)]
    assert all(np.array_equal(ds.memo[k][0], f) for k, f in memo_copy.items())   # augmentation never writes into it
    # one memo serves any image size
    big = VideoDataset(["v0"], textured_world, max_frames=4, image_size=48, memo=ds.memo)
    assert big[0]["frames"].shape[-1] == 48 and len(videos()) == 2
    rel = VideoDataset(["v0"], textured_world, max_frames=4, image_size=32, frame_sampling="released", memo=ds.memo)
    rel[0]
    assert len(videos()) == 3                                                # another sampling, another entry


def test_loading_options_through_the_constructor(textured_world):
    """uint8, memo, frame_cache and pixels are keyword arguments (defaults: float pixels, no memo, no cache) and stay
    readable."""
    plain = VideoDataset(["v0"], textured_world, max_frames=4, image_size=32)
    assert (plain.uint8, plain.memo, plain.frame_cache, plain.pixels) == (False, None, None, True)
    assert plain[0]["frames"].dtype == torch.float32
    memo = {}
    u = VideoDataset(["v0"], textured_world, max_frames=4, image_size=32, uint8=True, memo=memo)
    assert u.uint8 and u.memo is memo and u[0]["frames"].dtype == torch.uint8 and len(memo) == 1
    t = VideoTextDataset([("v0", "a clip")], textured_world, max_frames=4, image_size=32, pixels=False)
    item = t[0]
    n = plain[0]["frames"].shape[0]
    # frame count, no pixels
    assert not t.pixels and item["frames"].shape == (n, 0) and torch.equal(item["frame_mask"], plain[0]["frame_mask"])


def test_dataset_frame_sampling(textured_world):
    for rule in FRAME_RULES:
        ds = VideoTextDataset([("v1", "x")], textured_world, max_frames=12, image_size=32, frame_sampling=rule)
        vds = VideoDataset(["v1"], textured_world, max_frames=12, image_size=32, frame_sampling=rule)
        raw, mask = sample_frames(textured_world / "v1.mp4", 12, 1.0, rule)
        assert torch.equal(ds[0]["frames"], clip_preprocess(raw, 32)) and torch.equal(vds[0]["frames"], ds[0]["frames"])
    a = sample_frames(textured_world / "v1.mp4", rule="glscl")[0]
    b = sample_frames(textured_world / "v1.mp4", rule="released")[0]
    assert len(a) == 3 and len(b) == 3 and not np.array_equal(a, b)           # frames 0, 29, 59 vs 0, 30, 60
    with pytest.raises(ValueError, match="released"):
        VideoTextDataset([("v1", "x")], textured_world, frame_sampling="x")
    with pytest.raises(ValueError, match="released"): VideoDataset(["v1"], textured_world, frame_sampling="x")
    with pytest.raises(ValueError, match="RandAugment spec"):
        VideoTextDataset([("v1", "x")], textured_world, augment="nope")


def test_from_config_sampling_and_augment(world, textured_world):
    from glscl.config import load_config
    anno, vids = world
    cfg = load_config("toy").replace(anno_dir=str(anno), video_dir=str(vids), max_frames=4, image_size=32,
                                     frame_sampling="released", augment=RELEASED_AUGMENT, seed=11)
    ds = dataset_from_config(cfg, "train7k")
    assert (ds.frame_sampling, ds.augment, ds.seed, ds.max_frames, ds.image_size) == ("released",
                                                                                      RELEASED_AUGMENT, 11, 4, 32)
    assert ds[0]["frames"].shape == (4, 3, 32, 32)
    vds = videos_from_config(cfg, ["video2", "video0"])
    assert (vds.frame_sampling, vds.augment, vds.max_frames, vds.fps, vds.image_size) == ("released", None, 4, 1.0, 32)
    assert vds.video_ids == ["video2", "video0"] and vds.video_dir == vids
    raw, _ = sample_frames(vids / "video2.mp4", 4, 1.0, "released")
    assert torch.equal(vds[0]["frames"], clip_preprocess(raw, 32))
    plain = dataset_from_config(cfg.replace(augment=None, frame_sampling="glscl"), "train7k")
    assert plain.augment is None and plain.frame_sampling == "glscl" and plain.seed == 11
