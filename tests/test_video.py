"""Tests for pdfgc.video: the official crop, frame folders / videos, mp4 writing with audio."""

from __future__ import annotations

import subprocess

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf
import torch

from pdfgc import video as V
from pdfgc.audio import load_audio
from pdfgc.errors import PdfgcError

FPS = 25
SR = 16000


def _smooth_frames(n: int, h: int = 64, w: int = 96) -> np.ndarray:
    """Smooth colour ramps that move a little per frame (easy for H.264, so PSNR is high)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for k in range(n):
        out[k, ..., 0] = 40 + 150 * xx / w + k
        out[k, ..., 1] = 60 + 120 * yy / h
        out[k, ..., 2] = 128 + 60 * np.sin((xx + yy + 2 * k) / 20)
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


# --- crop ----------------------------------------------------------------------------------


def _centroid(img: np.ndarray) -> tuple[float, float]:
    w = img.astype(np.float64)
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    return float((w * yy).sum() / w.sum()), float((w * xx).sum() / w.sum())


@pytest.mark.parametrize("size, row, col", [(224, 100, 60), (224, 20, 190), (64, 30, 20)])
def test_crop_marker_lands_where_the_arithmetic_says(size, row, col):
    top, left, side = V.crop_box(size)
    img = np.zeros((size, size, 3), np.uint8)
    img[row:row + 4, col:col + 4] = 255  # a 4x4 white marker, centre (row + 1.5, col + 1.5)
    out = V.official_crop(img, size)
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    # zoom by size / side about pixel centres: x_out = (x_in - left + 0.5) * size / side - 0.5
    zoom = size / side
    expect = ((row + 1.5 - top + 0.5) * zoom - 0.5, (col + 1.5 - left + 0.5) * zoom - 0.5)
    got = _centroid((out[0].numpy() + 1) / 2)
    assert got == pytest.approx(expect, abs=0.15)


def test_crop_box_values_and_dropped_border():
    assert V.crop_box(224) == (0, 16, 192)
    assert V.crop_box(64) == (0, 5, 55)
    img = np.zeros((224, 224, 3), np.uint8)
    img[200:, :] = 255  # bottom 24 rows (dropped: only rows < 192 are kept)
    img[:, :12] = 255  # left 12 columns (dropped: only cols >= 16 are kept)
    img[:, 212:] = 255  # right 12 columns (dropped: cols < 208 are kept)
    assert torch.all(V.official_crop(img) == -1)


def test_crop_squashes_colour_and_range():
    img = np.zeros((300, 180, 3), np.uint8)  # not square, not 224: squashed first
    img[..., 0] = 255  # pure red (RGB order is kept)
    out = V.official_crop(img)
    assert out.shape == (3, 224, 224)
    assert torch.all(out[0] == 1) and torch.all(out[1:] == -1)
    # a point at relative position (0.5, 0.5) of the input maps like the 224 case
    img = np.zeros((448, 448, 3), np.uint8)
    img[222:226, 222:226] = 255
    got = _centroid((V.official_crop(img)[0].numpy() + 1) / 2)
    assert got == pytest.approx((111.5 * 224 / 192 + 0.5 * 224 / 192 - 0.5,
                                 (111.5 - 16 + 0.5) * 224 / 192 - 0.5), abs=0.3)
    with pytest.raises(ValueError):
        V.official_crop(np.zeros((10, 10), np.uint8))


def test_crop_of_a_large_frame_for_the_small_config():
    """A 224 frame cropped for 64 px (shrunk with INTER_AREA): the marker maps through both steps."""
    img = np.zeros((224, 224, 3), np.uint8)
    img[96:104, 60:68] = 255  # centre (99.5, 63.5)
    out = V.official_crop(img, 64)
    top, left, side = V.crop_box(64)
    to64 = lambda x: (x + 0.5) * 64 / 224 - 0.5  # noqa: E731
    zoom = lambda x, off: (x - off + 0.5) * 64 / side - 0.5  # noqa: E731
    got = _centroid((out[0].numpy() + 1) / 2)
    assert got == pytest.approx((zoom(to64(99.5), top), zoom(to64(63.5), left)), abs=0.2)
    assert out.max() > 0.5  # the 8 px marker survives as ~2.3 px


def test_to_uint8_round_trip():
    img = _smooth_frames(1)[0]
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1
    assert np.array_equal(V.to_uint8(x), img)
    assert V.to_uint8(x[None]).shape == (1, 64, 96, 3)


# --- reading -------------------------------------------------------------------------------


def _write_pngs(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for value, name in enumerate(names):
        img = np.full((8, 10, 3), 10 * value, np.uint8)
        img[..., 2] = 200  # distinguishes RGB from BGR
        cv2.imwrite(str(folder / name), img[..., ::-1])  # cv2 writes BGR


@pytest.mark.parametrize("fmt, start", [("{:04d}.png", 0), ("{:06d}.png", 0), ("{:06d}.png", 1),
                                        ("{}.png", 0)])
def test_read_frame_folder_in_order(tmp_path, fmt, start):
    names = [fmt.format(i) for i in range(start, start + 12)]  # 12 frames: "10" after "9"
    _write_pngs(tmp_path / "f", names)
    (tmp_path / "f" / "notes.txt").write_text("ignored")
    (tmp_path / "f" / ".hidden.png").write_bytes(b"ignored")
    frames = V.read_frames(tmp_path / "f")
    assert frames.shape == (12, 8, 10, 3) and frames.dtype == np.uint8
    assert list(frames[:, 0, 0, 0]) == [10 * i for i in range(12)]
    assert np.all(frames[..., 2] == 200)
    reader = V.iter_frames(tmp_path / "f")
    assert len(reader) == 12 and reader.fps is None and not reader.is_video


def test_read_image(tmp_path):
    _write_pngs(tmp_path, ["a.png"])
    img = V.read_image(tmp_path / "a.png")
    assert img.shape == (8, 10, 3) and img[0, 0, 2] == 200
    jpg = tmp_path / "grey.jpg"
    cv2.imwrite(str(jpg), np.full((6, 6), 128, np.uint8))
    assert V.read_image(jpg).shape == (6, 6, 3)  # grey is expanded to RGB


# --- writing and round trips ----------------------------------------------------------------


def test_write_read_round_trip_with_audio(tmp_path):
    frames = _smooth_frames(30)
    audio = tmp_path / "speech.wav"
    t = np.arange(int(1.5 * SR)) / SR  # 1.5 s of audio for a 1.2 s video
    sf.write(audio, 0.3 * np.sin(2 * np.pi * 440 * t), SR)
    out = V.write_video(tmp_path / "out.mp4", frames, FPS, audio_path=audio, trim_audio=True)
    info = V.probe(out)
    assert info["num_frames"] == 30 and info["fps"] == 25.0
    assert (info["width"], info["height"]) == (96, 64)
    assert info["video_duration"] == pytest.approx(1.2)
    assert info["has_audio"] and info["audio_sample_rate"] == SR
    assert info["audio_duration"] == pytest.approx(1.2, abs=1 / FPS)  # trimmed to the video
    assert info["video_start"] == 0 and info["audio_start"] == 0
    back = V.read_frames(out)
    assert back.shape == frames.shape
    assert _psnr(back, frames) > 30
    reader = V.iter_frames(out)
    assert reader.is_video and reader.fps == 25.0 and len(reader) == 30

    # trim_audio=False keeps the whole audio, never cuts the video
    out2 = V.write_video(tmp_path / "long.mp4", frames, FPS, audio_path=audio, trim_audio=False)
    info2 = V.probe(out2)
    assert info2["num_frames"] == 30
    assert info2["audio_duration"] == pytest.approx(1.5, abs=1 / FPS)


def test_writer_streams_batches_tensors_and_odd_sizes(tmp_path):
    frames = _smooth_frames(6, h=63, w=95)  # odd sides: padded to 64 x 96
    with V.VideoWriter(tmp_path / "odd.mp4", fps=10, crf=10, audio=np.zeros(SR, np.float32)) as w:
        w.write(frames[0])  # one frame
        w.write(frames[1:4])  # a batch
        w.write(torch.from_numpy(frames[4:]).permute(0, 3, 1, 2).float() / 127.5 - 1)  # [-1,1] floats
    assert w.num_frames == 6
    info = V.probe(tmp_path / "odd.mp4")
    assert (info["num_frames"], info["fps"], info["width"], info["height"]) == (6, 10.0, 96, 64)
    assert info["audio_duration"] == pytest.approx(0.6, abs=0.1)
    back = V.read_frames(tmp_path / "odd.mp4")
    assert _psnr(back[:, :63, :95], frames) > 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]  # no scratch files left


def _click_and_flash(tmp_path, name="sync.mp4"):
    """2 s video, frame 25 (t = 1.0 s) bright; audio click at exactly 1.0 s."""
    frames = np.full((50, 64, 64, 3), 20, np.uint8)
    frames[25] = 235
    wav = np.zeros(2 * SR, np.float32)
    wav[SR:SR + 8] = 0.9  # a short click at 1.0 s
    audio = tmp_path / "click.wav"
    sf.write(audio, wav, SR)
    return V.write_video(tmp_path / name, frames, FPS, audio_path=audio), audio


def _event_times(path) -> tuple[float, float]:
    """Bright-frame time and click time as decoded on the file's timeline."""
    frames = V.read_frames(path)
    bright = int(frames.reshape(len(frames), -1).mean(axis=1).argmax())
    wav = load_audio(path)  # ffmpeg decode pinned to the container's t = 0
    return bright / FPS, float(np.abs(wav).argmax()) / SR


def test_audio_video_alignment(tmp_path):
    out, audio = _click_and_flash(tmp_path)
    t_video, t_audio = _event_times(out)
    assert t_video == pytest.approx(1.0, abs=1e-9)
    assert abs(t_audio - t_video) < 1 / FPS  # within one frame (40 ms)
    assert abs(t_audio - 1.0) < 0.005

    # The measurement itself sees container offsets: shift the audio by 0.2 s on purpose.
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    shifted = tmp_path / "shifted.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(out), "-itsoffset", "0.2", "-i", str(audio),
                    "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(shifted)], check=True)
    t_video, t_audio = _event_times(shifted)
    assert t_audio - t_video == pytest.approx(0.2, abs=0.01)


def test_resampled_reading(tmp_path):
    out, _ = _click_and_flash(tmp_path)
    assert V.read_frames(out, fps=12.5).shape[0] == 25  # round(2.0 s * 12.5)
    # output frame k = the input frame on screen at t = k / fps (input frame 25 spans [1.0, 1.04))
    for fps, bright in ((5, [5]), (30, [30, 31]), (12.5, [])):
        frames = V.read_frames(out, fps=fps)
        assert frames.shape[0] == round(2.0 * fps)
        assert list(np.nonzero(frames.reshape(len(frames), -1).mean(axis=1) > 100)[0]) == bright
    assert V.iter_frames(out, fps=12.5).fps == 12.5
    # stopping early does not hang or leak
    it = iter(V.iter_frames(out))
    next(it)
    it.close()


# --- atomicity and errors ---------------------------------------------------------------------


def test_exception_inside_writer_leaves_nothing(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with V.VideoWriter(target, fps=FPS) as w:
            w.write(_smooth_frames(3))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    # an existing file is left untouched by a failed write
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with V.VideoWriter(target, fps=FPS, audio=np.zeros(SR)) as w:
            w.write(_smooth_frames(3))
            raise RuntimeError("boom")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]

    # no frames at all is an error too, and leaves nothing
    with pytest.raises(PdfgcError, match="no frames"):
        with V.VideoWriter(tmp_path / "empty.mp4", fps=FPS):
            pass
    assert not (tmp_path / "empty.mp4").exists()


def test_bad_inputs_raise_pdfgc_error(tmp_path):
    with pytest.raises(PdfgcError, match="not found"):
        V.read_frames(tmp_path / "missing.mp4")
    with pytest.raises(PdfgcError, match="not found"):
        V.read_image(tmp_path / "missing.png")
    with pytest.raises(PdfgcError, match="not found"):
        V.probe(tmp_path / "missing.mp4")
    with pytest.raises(PdfgcError, match="audio file not found"):
        V.VideoWriter(tmp_path / "o.mp4", audio_path=tmp_path / "missing.wav")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PdfgcError, match="no image files"):
        V.read_frames(tmp_path / "empty")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 200)
    for fn in (V.read_frames, V.probe, V.iter_frames):
        with pytest.raises(PdfgcError, match="garbage.mp4"):
            fn(garbage)
    bad_img = tmp_path / "frames" / "0000.jpg"
    bad_img.parent.mkdir()
    bad_img.write_bytes(b"not a jpeg")
    with pytest.raises(PdfgcError, match="0000.jpg"):
        V.read_frames(bad_img.parent)
    with pytest.raises(PdfgcError, match="0000.jpg"):
        V.read_image(bad_img)


def test_truncated_video_is_detected(tmp_path):
    rng = np.random.default_rng(0)
    out = V.write_video(tmp_path / "noise.mp4", rng.integers(0, 255, (20, 64, 64, 3), dtype=np.uint8), FPS)
    data = out.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(PdfgcError, match="truncated or corrupt"):
        V.read_frames(cut)
    partial = V.read_frames(cut, strict=False)  # lenient mode keeps what decoded
    assert 0 < partial.shape[0] < 20


def test_rotated_video_is_read_upright(tmp_path):
    """A display-rotation tag (phone videos) is applied by ffmpeg; the reader must use the
    rotated size, not the coded one."""
    plain = V.write_video(tmp_path / "plain.mp4", _smooth_frames(3, h=48, w=64), FPS)
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90",
                    "-i", str(plain), "-c", "copy", str(rotated)], check=True)
    a, b = V.read_frames(plain), V.read_frames(rotated)
    assert b.shape == (3, 64, 48, 3)
    assert np.array_equal(b[0], np.rot90(a[0], 1))
    info = V.probe(rotated)
    assert (info["width"], info["height"]) == (48, 64)
