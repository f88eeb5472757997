"""Load the networks to evaluate from an export folder or a stage checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from pdfgc.checkpoints import load_official
from pdfgc.errors import PdfgcError
from pdfgc.networks import load_networks_config
from pdfgc.stages.base import NETWORKS_SIDECAR, stage_from_checkpoint

REQUIRED = ("appearance_model.pth", "motion_model.pth", "audio_model.pth", "generator_model.pth")


def load_eval_networks(checkpoint: str | Path, networks: str | None = None, device: str = "cpu"):
    """Networks (appearance, motion, audio, generator; eval mode) from ``checkpoint``.

    ``checkpoint`` is an export folder (the official four files; its ``networks.yaml`` gives the
    sizes, else ``networks``, default ``official``) or a stage ``.ckpt`` (exported on the fly).
    """
    path = Path(checkpoint)
    if path.is_file() and path.suffix == ".ckpt":
        with tempfile.TemporaryDirectory() as tmp:
            stage = stage_from_checkpoint(path)
            stage.export(tmp)
            return load_eval_networks(tmp, networks, device)
    if not path.is_dir():
        raise PdfgcError(f"checkpoint not found: {path} (give an export folder or a .ckpt)")
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if missing:
        raise PdfgcError(f"{path} lacks {', '.join(missing)}: evaluation needs a stage-3 export "
                         "(or the official release)")
    sidecar = path / NETWORKS_SIDECAR
    cfg = load_networks_config(str(sidecar) if sidecar.exists() else (networks or "official"))
    nets = load_official(path, device=device, networks_cfg=cfg)
    nets.generator.noise_mode = "fixed"
    nets.image_size = int(cfg["image_size"])
    return nets


@torch.no_grad()
def motion_codes(nets, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Per-image codes: ``lip (N,500)`` (visual lip code), ``pose (N,6)``, ``eye (N,6)``,
    ``emotion (N,30)``, from images ``(N, 3, S, S)`` in [-1, 1]."""
    outs = {"lip": [], "pose": [], "eye": [], "emotion": []}
    for s in range(0, len(images), batch_size):
        pose, eye, emotion, mouth_feature = nets.motion(images[s:s + batch_size])
        outs["lip"].append(nets.motion.mouth_code(mouth_feature))
        outs["pose"].append(pose)
        outs["eye"].append(eye)
        outs["emotion"].append(emotion)
    return {k: torch.cat(v) for k, v in outs.items()}


def window_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Centred moving mean over the first axis of ``(F, D)``, window ``k`` (shrinks at the ends):
    the emotion code as stage 3 trains it (averaged over K frames)."""
    if k <= 1:
        return x
    half = k // 2
    c = torch.cat([torch.zeros_like(x[:1]), x.cumsum(0)])
    idx = torch.arange(len(x))
    lo, hi = (idx - half).clamp(min=0), (idx + half + 1).clamp(max=len(x))
    return (c[hi] - c[lo]) / (hi - lo).unsqueeze(1).to(x.dtype)
