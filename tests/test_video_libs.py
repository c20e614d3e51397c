"""glscl.video on maintained libraries: CLIP preprocessing by torchvision.transforms.v2 on uint8 batches (as close to
open_clip's PIL transform as a grey level or two), and compress_video by ffmpeg's fps and scale filters through
PyAV's filter graph (the frame shown at each tick, ffmpeg's frame-rate semantics with round=up)."""
import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

import glscl.video as V
from glscl.video import OPENAI_STD, clip_preprocess, compress_video, resize_crop, write_video

LEVEL = 1 / (255 * torch.tensor(OPENAI_STD).view(3, 1, 1))        # one grey level after normalising, per channel


# ---------------------------------------------------------------- CLIP preprocessing
@pytest.mark.parametrize("h,w,S", [(240, 320, 224), (320, 240, 224), (101, 137, 64), (257, 99, 224), (96, 96, 64),
                                   (225, 225, 224)])
def test_clip_preprocess_within_two_grey_levels_of_open_clip(h, w, S):
    "Noise is where a float resize misses PIL by many grey levels; torchvision's uint8 kernel stays within two."
    import open_clip
    from PIL import Image
    frames = np.random.default_rng(h * w + S).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    ours = clip_preprocess(frames, S)
    tf = open_clip.image_transform(S, is_train=False)
    ref = torch.stack([tf(Image.fromarray(f)) for f in frames])
    d = (ours - ref).abs() / LEVEL
    assert d.max() < 2.01 and d.mean() < 0.02


def test_resize_crop_contract():
    frames = np.random.default_rng(0).integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    x = resize_crop(frames, 32)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 32, 32) and x.is_contiguous()
    assert torch.equal(x, x.round()) and 0 <= x.min() and x.max() <= 255                  # whole grey levels
    assert torch.equal(resize_crop(torch.from_numpy(frames), 32), x)                      # tensors as numpy
    exact = frames[:, 9:41, 3:35]                                                        # already 32x32: unchanged
    assert torch.equal(resize_crop(exact, 32), torch.from_numpy(exact.copy()).permute(0, 3, 1, 2).float())
    assert torch.equal(V.normalize_frames(x.to(torch.uint8)), clip_preprocess(frames, 32))  # the frame cache's path


# ---------------------------------------------------------------- compress_video through ffmpeg's filters
def coded(n, h, w):
    "Frame k shows k in two grey halves (k % 16 on the left, k // 16 on the right), robust to resizing and H.264."
    f = np.zeros((n, h, w, 3), np.uint8)
    for k in range(n): f[k, :, : w // 2] = 16 * (k % 16) + 8; f[k, :, w // 2:] = 16 * (k // 16) + 8
    return f


def shown(frames):
    h, w = frames.shape[1:3]
    a = frames[:, h // 4:3 * h // 4, w // 8:3 * w // 8].mean((1, 2, 3))
    b = frames[:, h // 4:3 * h // 4, 5 * w // 8:7 * w // 8].mean((1, 2, 3))
    return (np.round((a - 8) / 16) + 16 * np.round((b - 8) / 16)).astype(int).tolist()


def expected(n, rate, fps):
    "Tick k (k/fps s, while before the last frame's end n/rate) shows the latest frame i with i/rate <= k/fps."
    rate, fps = Fraction(rate).limit_denominator(100_000), Fraction(fps).limit_denominator(100_000)
    ticks = math.ceil(n / rate * fps)
    return [min(n - 1, math.floor(k / fps * rate)) for k in range(ticks)]


def read(p):
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        fr = list(c.decode(s))
        return np.stack([f.to_ndarray(format="rgb24") for f in fr]), [float(f.time) for f in fr], float(s.average_rate)


@pytest.mark.parametrize("n,rate,fps,size,short,out", [
    (24, 12, 3, (64, 128), 32, (32, 64)),          # 12 -> 3 fps: every 4th frame
    (150, 29.97, 3, (48, 64), 32, (32, 42)),        # NTSC rate, not a multiple of 3
    (51, 25, 3, (64, 48), 32, (42, 32)),            # 2.04 s: the last tick at 2 s still gets a frame
    (6, 2, 3, (90, 50), 20, (36, 20)),              # slower than the output: frames repeated
    (30, 30, 2.5, (32, 32), 16, (16, 16)),          # a fractional output rate
    (240, 24000 / 1001, 3, (32, 32), 16, (16, 16)),  # 23.976 fps film
])
def test_compress_video_frame_at_each_tick(tmp_path, n, rate, fps, size, short, out):
    src, dst = tmp_path / "src.mp4", tmp_path / "dst.mp4"
    write_video(src, coded(n, *size), rate)
    compress_video(src, dst, fps=fps, short_side=short)
    frames, times, avg = read(dst)
    assert frames.shape[1:3] == out and abs(avg - fps) < 1e-6
    assert shown(frames) == expected(n, rate, fps)
    assert np.allclose(times, np.arange(len(frames)) / fps, atol=1e-3)


def test_compress_video_rounding_near_is_half_a_tick_later(tmp_path):
    "ffmpeg's default round=near would show the frame started before (k + 1/2)/fps s; compress_video uses round=up."
    src = tmp_path / "src.mp4"
    write_video(src, coded(24, 32, 64), 12)
    with av.open(str(src)) as c:
        near = shown(np.stack([f.to_ndarray(format="rgb24") for f in V._filtered(c, 3, 16, "near")]))
    with av.open(str(src)) as c:
        up = shown(np.stack([f.to_ndarray(format="rgb24") for f in V._filtered(c, 3, 16, "up")]))
    assert up == [0, 4, 8, 12, 16, 20] and near == [1, 5, 9, 13, 17, 21]


def test_compress_video_other_pixel_formats_and_containers(tmp_path):
    """A full-range MJPEG .avi (yuvj420p) and a yuv444p H.264 .mkv: the graph converts them to limited-range yuv420p
    for the encoder (without out_range=tv, the MJPEG's grey levels came out too dark and misread here)."""
    frames = coded(12, 48, 64)
    for name, codec, pix in [("a.avi", "mjpeg", "yuvj420p"), ("b.mkv", "libx264", "yuv444p")]:
        src = tmp_path / name
        with av.open(str(src), "w") as o:
            s = o.add_stream(codec, rate=6); s.height, s.width, s.pix_fmt = 48, 64, pix
            for f in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")): o.mux(p)
            for p in s.encode(): o.mux(p)
        with av.open(str(src)) as c: t = [f.time for f in c.decode(video=0)]
        compress_video(src, tmp_path / f"{name}.mp4", fps=3, short_side=24)
        got, _, _ = read(tmp_path / f"{name}.mp4")
        # tick k shows the latest frame that starts at or before k/3 s, by the file's own timestamps: Matroska's are
        # whole milliseconds, so frame 4 starts at 0.667 s, after the tick at 2/3 s, which still shows frame 3
        want = [max(i for i in range(12) if t[i] <= k / 3) for k in range(6)]
        assert got.shape == (6, 24, 32, 3) and shown(got) == want, name
        if name == "b.mkv": assert want == [0, 2, 3, 6, 8, 9]
        else: assert want == expected(12, 6, 3)


def test_compress_video_errors_leave_nothing(tmp_path):
    bad = tmp_path / "bad.mp4"; bad.write_bytes(b"not a video" * 100)
    with pytest.raises(V.VideoError): compress_video(bad, tmp_path / "out" / "x.mp4")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(ValueError, match="fps"): compress_video(bad, tmp_path / "y.mp4", fps=0)
