"""The sample callback: PNG grid for every stage, and a K-frame mp4 for window stages."""

from types import SimpleNamespace

import numpy as np
import torch

from callbacks.samples import SampleCallback, rows_to_grid
from pdfgc.video import probe

K, S = 5, 16


class WindowStub(torch.nn.Module):
    """A stage whose rows read the window like stage 3: target = centre frame, 'emotion' = window mean."""

    sample_video_over_window = True
    device = torch.device("cpu")

    def sample_rows(self, batch):
        frames = batch["frames"]
        return {"target": frames[:, K // 2], "emotion": frames.mean(1), "source": batch["source"]}


def window_batch(b=2):
    # Frame t of sample i is a flat image of value -0.8 + 0.4 t (+0.05 i): easy to read back.
    values = -0.8 + 0.4 * torch.arange(K).view(1, K, 1, 1, 1) + 0.05 * torch.arange(b).view(b, 1, 1, 1, 1)
    return {"frames": values.expand(b, K, 3, S, S).clone(), "mels": torch.randn(b, K, 1, 80, 20),
            "source": torch.zeros(b, 3, S, S), "clip": ["a", "b"][:b]}


def fake_trainer(root):
    return SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=0, global_step=7,
                           default_root_dir=str(root), loggers=[])


def test_video_moves_the_target_over_the_window_and_keeps_window_means():
    module, batch = WindowStub(), window_batch()
    video = SampleCallback.render_video(module, batch)
    assert video.dtype == np.uint8 and video.shape[0] == K
    assert video.shape[1] % 2 == 0 and video.shape[2] % 2 == 0
    grid = rows_to_grid(module.sample_rows(batch))  # (3, H, W)
    assert video.shape[1:] == (grid.shape[1] // 2 * 2, grid.shape[2] // 2 * 2, 3)
    pad = 2  # make_grid's padding
    target_px = video[:, pad + S // 2, pad + S // 2, 0].astype(float)  # row 0, column 0
    expected = (np.clip(-0.8 + 0.4 * np.arange(K), -1, 1) + 1) * 127.5
    np.testing.assert_allclose(target_px, expected, atol=1.5)
    emotion_px = video[:, 2 * pad + S + S // 2, pad + S // 2, 0].astype(float)  # row 1: constant over time
    assert np.ptp(emotion_px) <= 1.0


def test_callback_writes_grid_and_video_only_for_window_stages(tmp_path):
    callback = SampleCallback(num_samples=2, fps=25)
    callback.on_validation_batch_end(None, None, None, window_batch(), 0)
    module = WindowStub()
    callback.on_validation_epoch_end(fake_trainer(tmp_path), module)
    png, mp4 = tmp_path / "samples" / "step_0000007.png", tmp_path / "samples" / "step_0000007.mp4"
    assert png.is_file() and mp4.is_file()
    assert probe(mp4)["num_frames"] == K

    class GridOnly(WindowStub):
        sample_video_over_window = False

    other = tmp_path / "other"
    callback.on_validation_epoch_end(fake_trainer(other), GridOnly())
    assert (other / "samples" / "step_0000007.png").is_file()
    assert not (other / "samples" / "step_0000007.mp4").exists()
    assert not list((tmp_path / "samples").glob("*.tmp*")), "no half-written files left"
