"""The two frame readers behind glscl.video.sample_frames, decord and PyAV: the same frames for the same indices (toy
world, B-frames, open GOPs, variable frame rate, other containers), the same errors for bad files, PyAV seeking
instead of decoding whole videos, and how the reader is chosen. At the end, the video tests of test_data.py run
again with the PyAV reader forced (the reader of macOS and ARM Linux, where decord has no wheel)."""
import importlib.util
import inspect
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import glscl.video as D
from glscl.data import VideoDataset
from glscl.video import VIDEO_BACKEND_ENV, VIDEO_BACKENDS, VideoError, frame_indices, sample_frames, video_backend

HAS_DECORD = importlib.util.find_spec("decord") is not None
needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed (no wheel for macOS or ARM Linux)")
BACKENDS = ["pyav", pytest.param("decord", marks=needs_decord)]
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- videos and the slow, obvious reference
def textured(n, h=32, w=64, step=3, seed=0):
    "n frames: brightness step*k in the top half says which frame it is; noise below makes real P- and B-frames."
    rng = np.random.default_rng(seed)
    f = np.zeros((n, h, w, 3), np.uint8)
    for k in range(n): f[k, :h // 2] = (step * k) % 256; f[k, h // 2:] = rng.integers(0, 256, (h - h // 2, w, 3))
    return f


def encode(path, frames, fps=4, fmt="mp4", x264="", times_ms=None, container_opts=None):
    "Encode with libx264 and `x264` params; `times_ms` gives each frame its own timestamp (variable frame rate)."
    with av.open(str(path), "w", format=fmt, options=container_opts or {}) as c:
        s = c.add_stream("libx264", rate=D._rate(fps))
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        if x264: s.options = {"x264-params": x264}
        if times_ms is not None: s.codec_context.time_base = s.time_base = Fraction(1, 1000)
        for k, a in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(a, format="rgb24")
            if times_ms is not None: fr.pts, fr.time_base = int(times_ms[k]), Fraction(1, 1000)
            for p in s.encode(fr): c.mux(p)
        for p in s.encode(): c.mux(p)
    return Path(path)


def decode_all(path):
    "Reference: decode every frame in order with PyAV (the decoder outputs display order): frames [n,H,W,3], fps."
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)]), float(s.average_rate)


def top_index(frames, step=3):
    return np.round(frames[:, : frames.shape[1] // 2].reshape(len(frames), -1).mean(1) / step).astype(int).tolist()


CASES = {  # name: (n frames, fps, container, x264 params, variable frame rate)
    "x264 defaults (B-frames, scene-cut keyframes)": (60, 4, "mp4", "", False),
    "keyframe every 3, 3 B-frames": (40, 4, "mp4", "keyint=3:min-keyint=1:bframes=3:scenecut=0", False),
    "all intra": (20, 4, "mp4", "keyint=1", False),
    "open GOP": (50, 5, "mp4", "keyint=10:bframes=3:open-gop=1:scenecut=0", False),
    "29.97 fps": (75, 29.97, "mp4", "keyint=15:scenecut=0", False),
    "variable frame rate": (45, 10, "mp4", "keyint=8:bframes=2", True),
    "matroska": (40, 4, "matroska", "keyint=5:bframes=2", False),
}
SAMPLINGS = [(12, 1.0, "glscl"), (5, 2.0, "released"), (1000, 1000.0, "glscl")]      # the last takes every frame


@pytest.fixture(scope="module")
def hard_videos(tmp_path_factory):
    d, out = tmp_path_factory.mktemp("hard"), {}
    for i, (name, (n, fps, fmt, x264, vfr)) in enumerate(CASES.items()):
        times = np.cumsum(np.random.default_rng(i).integers(30, 300, n)) - 30 if vfr else None
        out[name] = encode(d / f"case{i}.{'mkv' if fmt == 'matroska' else 'mp4'}", textured(n, seed=i), fps,
                           fmt, x264, times)
    return out


def check_frames(frames, every, idx, backend, case):
    """`frames` are `every[idx]`. One known exception: decord on an open-GOP stream. After seeking to a keyframe
    that has leading B-frames (frames shown before it but stored after it), decord returns the frame after the one
    asked for; PyAV matches the frames by timestamp and stays exact."""
    if backend == "decord" and case == "open GOP":
        off = [i for f, i in zip(frames, idx, strict=True) if not np.array_equal(f, every[i])]
        assert all(np.array_equal(f, every[i + 1]) for f, i in zip(frames, idx, strict=True) if i in off), off
        return off
    assert np.array_equal(frames, every[idx]), (case, backend, idx.tolist())
    return []


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_equals_decoding_everything(hard_videos, case, backend):
    p = hard_videos[case]
    every, fps = decode_all(p)
    assert top_index(every) == list(range(CASES[case][0]))        # the writer and the reference agree on the order
    for max_frames, sfps, rule in SAMPLINGS:
        idx = frame_indices(len(every), fps, max_frames, sfps, rule)
        frames, mask = sample_frames(p, max_frames, sfps, rule, backend=backend)
        off = check_frames(frames, every, idx, backend, case)
        if off: print(f"decord, {case}, {max_frames} frames at {sfps} fps ({rule}): frames {off} came back one late")
        assert mask.sum() == len(idx) == len(frames) and len(mask) == max_frames


@needs_decord
@pytest.mark.parametrize("case", list(CASES))
def test_random_index_sets_equal_across_backends(hard_videos, case, monkeypatch):
    "Arbitrary sorted index sets (forward jumps, neighbours, the last frame) through sample_frames: both readers agree."
    p, rng = hard_videos[case], np.random.default_rng(len(case))
    every, _ = decode_all(p)
    n = len(every)
    for _ in range(6):
        idx = np.unique(np.r_[rng.choice(n, size=rng.integers(1, 8), replace=False), n - 1 if rng.random() < .5 else 0])
        monkeypatch.setattr(D, "frame_indices", lambda *a, idx=idx, **k: idx)
        a, _ = sample_frames(p, 20, backend="pyav")
        b, _ = sample_frames(p, 20, backend="decord")
        assert np.array_equal(a, every[idx]), (case, idx.tolist())
        if case != "open GOP": assert np.array_equal(b, a), (case, idx.tolist())
        else: assert all(np.array_equal(f, every[i]) or np.array_equal(f, every[i + 1])
                         for f, i in zip(b, idx, strict=True))


def toy_videos(tmp_path_factory, k=8):
    "k videos of the toy world: data/toy's, or a small world drawn into a temporary folder."
    d = ROOT / "data" / "toy" / "videos"
    if not (d / "video0.mp4").is_file():
        from glscl.toyworld import make_toy_msrvtt
        d = make_toy_msrvtt(tmp_path_factory.mktemp("toy"), n_videos=k, seed=0) / "videos"
    return sorted(d.glob("*.mp4"), key=lambda p: int(p.stem[5:]))[:k]


@needs_decord
def test_toy_world_identical_frames(tmp_path_factory):
    """decord and PyAV return byte-identical frames on the toy world's videos (all of them:
    benchmarks/bench_video_backends.py)."""
    for p in toy_videos(tmp_path_factory):
        every, fps = decode_all(p)
        for max_frames, sfps, rule in [(12, 1.0, "glscl"), (12, 1.0, "released"), (8, 3.0, "glscl")]:
            a, ma = sample_frames(p, max_frames, sfps, rule, backend="decord")
            b, mb = sample_frames(p, max_frames, sfps, rule, backend="pyav")
            assert np.array_equal(a, b) and np.array_equal(ma, mb), (p.name, max_frames, sfps, rule)
            assert np.array_equal(b, every[frame_indices(len(every), fps, max_frames, sfps, rule)])


def test_pyav_seeks_instead_of_decoding_everything(tmp_path):
    "12 frames of a 300-frame video with a keyframe every 30: each costs at most one GOP of decoding, not the video."
    p = encode(tmp_path / "long.mp4", textured(300, step=1), fps=30, x264="keyint=30:min-keyint=30:scenecut=0")
    every, fps = decode_all(p)
    for max_frames, gops in [(4, 4), (1, 1)]:
        stats = {}
        got = D._read_pyav(p, max_frames, 0.1, "glscl", stats)          # 0.1 fps: one frame every 10 s (300 frames)
        idx = frame_indices(300, fps, max_frames, 0.1)
        assert np.array_equal(got, every[idx])
        assert stats["decoded"] <= gops * 30, (max_frames, stats)        # at most one GOP per chosen frame
    stats = {}
    D._read_pyav(p, 6, 1.0, "glscl", stats)                              # frames 0, 60, 120, ...: keyframes themselves
    assert stats["decoded"] == 6


# ---------------------------------------------------------------- bad files: the same errors from both readers
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = encode(d / "good.mp4", textured(40), 4, x264="keyint=40", container_opts={"movflags": "faststart"})
    data = good.read_bytes()
    with av.open(str(good)) as c: pk = [(q.pos, q.size) for q in c.demux(video=0) if q.size]
    (d / "empty.mp4").touch()
    (d / "junk.mp4").write_bytes(b"this is not a video" * 100)
    plain = encode(d / "plain.mp4", textured(40), 4)                     # moov at the end: half a file has no index
    (d / "half.mp4").write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    (d / "cut.mp4").write_bytes(data[: pk[25][0]])                       # header says 40 frames, 25 packets remain
    bad = bytearray(data)
    for pos, size in pk[12:16]: bad[pos:pos + size] = bytes(size)        # four packets zeroed mid-file
    (d / "zeroed.mp4").write_bytes(bytes(bad))
    (d / "folder.mp4").mkdir()
    return d


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,why", [("empty", "empty"), ("junk", ""), ("half", ""), ("folder", "directory"),
                                      ("cut", "declares 40 frames but holds only 25"), ("zeroed", "decoding frames")])
def test_bad_files_raise_video_error(bad_files, backend, name, why):
    with pytest.raises(VideoError, match=f"{name}.mp4") as e: sample_frames(bad_files / f"{name}.mp4", backend=backend)
    assert why in str(e.value) and "compress_videos" in str(e.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_file_and_partly_readable(bad_files, backend):
    with pytest.raises(FileNotFoundError, match="nothere.mp4"):
        sample_frames(bad_files / "nothere.mp4", backend=backend)
    every, _ = decode_all(bad_files / "good.mp4")
    if backend == "pyav":                          # frame 0 precedes the damage: PyAV decodes only up to it
        frames, _ = sample_frames(bad_files / "zeroed.mp4", max_frames=1, backend=backend)
        assert np.array_equal(frames, every[:1])
    else:              # decord's reader thread decodes ahead, into the damage or not (a race): an error or frame 0
        try: assert np.array_equal(sample_frames(bad_files / "zeroed.mp4", max_frames=1, backend=backend)[0], every[:1])
        except VideoError as e: assert "zeroed.mp4" in str(e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dataset_skips_directory_and_truncated(bad_files, backend, monkeypatch, caplog):
    "Through the loaders: a directory and a truncated mp4 are counted, logged skips, the good video loads."
    import logging
    monkeypatch.setenv(VIDEO_BACKEND_ENV, backend)
    ds = VideoDataset(["good", "folder", "cut"], bad_files, max_frames=4, image_size=16)
    with caplog.at_level(logging.WARNING, logger="glscl.data"):
        items = [ds[j] for j in range(3)]
    assert items[0] is not None and items[1] is None and items[2] is None and ds.n_skipped == 2
    assert "folder.mp4" in caplog.text and "cut.mp4" in caplog.text


# ---------------------------------------------------------------- narrow frames
@pytest.mark.parametrize("backend", BACKENDS)
def test_narrow_widths(tmp_path, backend):
    """PyAV reads every width; decord fails on some narrow ones (a row-alignment bug). Either a reader gives the
    reference frames or it raises VideoError: never different pixels."""
    failed = []
    for w in list(range(2, 26, 2)) + [48, 72, 96]:
        p = encode(tmp_path / f"w{w}.mp4", textured(8, h=16, w=w), 4)
        every, _ = decode_all(p)
        try: frames, _ = sample_frames(p, max_frames=4, fps=2.0, backend=backend)
        except VideoError as e:
            assert f"w{w}.mp4" in str(e); failed.append(w); continue
        assert np.array_equal(frames, every[frame_indices(8, 4.0, 4, 2.0)]), w
    print(f"{backend} failed on widths {failed}")
    if backend == "pyav": assert failed == []
    else: assert 96 not in failed


# ---------------------------------------------------------------- choosing the reader
def test_video_backend_choice(monkeypatch):
    monkeypatch.delenv(VIDEO_BACKEND_ENV, raising=False)
    assert video_backend() == ("decord" if HAS_DECORD else "pyav") == video_backend("auto")
    monkeypatch.setenv(VIDEO_BACKEND_ENV, "pyav")
    assert video_backend() == "pyav" and video_backend("auto") == ("decord" if HAS_DECORD else "pyav")  # argument wins
    monkeypatch.setenv(VIDEO_BACKEND_ENV, "PyAV ")
    assert video_backend() == "pyav"
    monkeypatch.setenv(VIDEO_BACKEND_ENV, "opencv")
    with pytest.raises(ValueError, match=VIDEO_BACKEND_ENV) as e: video_backend()
    assert "opencv" in str(e.value) and "pyav" in str(e.value)
    with pytest.raises(ValueError, match="'backend'|backend"): sample_frames("x.mp4", backend="ffmpeg")
    monkeypatch.delenv(VIDEO_BACKEND_ENV)

    def no_decord(): raise ImportError("no decord here")                 # a Mac: decord does not install
    monkeypatch.setattr(D, "_decord", no_decord)
    assert video_backend() == "pyav" == video_backend("auto")
    with pytest.raises(ImportError, match="no decord"): video_backend("decord")
    assert set(VIDEO_BACKENDS) == {"decord", "pyav"}


def test_auto_reads_without_decord(tmp_path, monkeypatch):
    "With decord unimportable, sample_frames still reads (through PyAV) and gives the reference frames."
    p = encode(tmp_path / "v.mp4", textured(20), 4)
    monkeypatch.setitem(sys.modules, "decord", None)                      # `import decord` now raises ImportError
    monkeypatch.delenv(VIDEO_BACKEND_ENV, raising=False)
    every, _ = decode_all(p)
    frames, _ = sample_frames(p)
    assert np.array_equal(frames, every[frame_indices(20, 4.0)])
    with pytest.raises(ImportError, match=VIDEO_BACKEND_ENV): sample_frames(p, backend="decord")


# ---------------------------------------------------------------- test_data.py's video tests, PyAV forced
import test_data as _td                                                  # noqa: E402 (tests/ is on sys.path)

_DECORD_ONLY = {"test_sample_frames_decodes_only_chosen", "test_sample_frames_bad_fps_and_shape"}   # spy on decord
_VIDEO_TESTS = [n for n in dir(_td) if n.startswith("test_") and n not in _DECORD_ONLY and
                any(k in n for k in ("sample_frames", "video", "compress", "dataset", "from_config")) and
                # some use decord as their reference
                (HAS_DECORD or "decord" not in inspect.getsource(getattr(_td, n)))]
for _n in _VIDEO_TESTS: globals()[f"{_n}__pyav"] = getattr(_td, _n)
for _n in dir(_td):                                                      # their fixtures
    if (hasattr(getattr(_td, _n), "_pytestfixturefunction")
        or type(getattr(_td, _n)).__name__ == "FixtureFunctionDefinition"):
        globals().setdefault(_n, getattr(_td, _n))


@pytest.fixture(autouse=True)
def _pyav_for_test_data(request, monkeypatch):
    "Force PyAV in the tests taken from test_data.py (names ending in __pyav)."
    if request.node.originalname.endswith("__pyav"): monkeypatch.setenv(VIDEO_BACKEND_ENV, "pyav")


def test_forced_pyav_covers_the_video_tests():
    assert len(_VIDEO_TESTS) >= 10, _VIDEO_TESTS


def test_backend_is_forced__pyav():
    "The tests above that end in __pyav run with GLSCL_VIDEO_BACKEND=pyav."
    assert video_backend() == "pyav"
