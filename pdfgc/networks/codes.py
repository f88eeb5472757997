"""Layout of the code vectors that drive the generator (PD-FGC's disentangled factors).

The generator's style ``(B, 2590)`` is the concatenation, in this fixed order, of

=========  ====  ==========================================================
factor     dims  source
=========  ====  ==========================================================
id         2048  E_app global vector
mouth       500  E_aud ``mouth`` (or E_mot ``mouth_code`` for the visual lip code)
emotion      30  E_mot emotion head
eye           6  E_mot eye head (dims 2-3 gaze, dims 0, 1, 4, 5 blink)
pose          6  E_mot head-pose head
=========  ====  ==========================================================

Stage 1's G0 is driven by ``[id 2048 | unified motion 512]`` = 2560 instead.
"""

from __future__ import annotations

import torch

ID_DIM = 2048
MOUTH_DIM = 500
EMOTION_DIM = 30
EYE_DIM = 6
POSE_DIM = 6
UNIFIED_MOTION_DIM = 512  # E_mot's unified motion feature, also E_aud's feature size
MOTION_DIM = MOUTH_DIM + EMOTION_DIM + EYE_DIM + POSE_DIM  # 542
STYLE_DIM = ID_DIM + MOTION_DIM  # 2590
STAGE1_STYLE_DIM = ID_DIM + UNIFIED_MOTION_DIM  # 2560, G0 of stage 1

ID = slice(0, ID_DIM)
MOUTH = slice(ID.stop, ID.stop + MOUTH_DIM)
EMOTION = slice(MOUTH.stop, MOUTH.stop + EMOTION_DIM)
EYE = slice(EMOTION.stop, EMOTION.stop + EYE_DIM)
POSE = slice(EYE.stop, EYE.stop + POSE_DIM)
assert POSE.stop == STYLE_DIM

#: Eye-code dims that carry gaze, and those that carry blink (the release's masks).
GAZE_DIMS = (2, 3)
BLINK_DIMS = (0, 1, 4, 5)
#: Multiply an eye code by this to keep gaze only (the release's "no --blink" mask).
GAZE_MASK = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)
#: Multiply an eye code by this to keep blink only (the release's "no --gaze" mask).
BLINK_MASK = (1.0, 1.0, 0.0, 0.0, 1.0, 1.0)

_PARTS = (("id_vec", ID_DIM), ("mouth", MOUTH_DIM), ("emotion", EMOTION_DIM),
          ("eye", EYE_DIM), ("pose", POSE_DIM))


def compose_style(id_vec: torch.Tensor, mouth: torch.Tensor, emotion: torch.Tensor,
                  eye: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Concatenate the factor codes into the generator's style vector.

    Args: ``id_vec (B, 2048)``, ``mouth (B, 500)``, ``emotion (B, 30)``, ``eye (B, 6)``,
    ``pose (B, 6)``. Returns ``(B, 2590)`` in the order id | mouth | emotion | eye | pose.
    """
    parts = (id_vec, mouth, emotion, eye, pose)
    batch = id_vec.shape[0]
    for (name, dim), part in zip(_PARTS, parts):
        if part.dim() != 2 or part.shape[1] != dim or part.shape[0] != batch:
            raise ValueError(f"compose_style: {name} must be ({batch}, {dim}), got {tuple(part.shape)}")
    return torch.cat(parts, dim=1)


def split_style(style: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compose_style`: ``(B, 2590)`` -> dict of the five factor codes."""
    if style.shape[-1] != STYLE_DIM:
        raise ValueError(f"split_style: expected last dim {STYLE_DIM}, got {tuple(style.shape)}")
    return {"id_vec": style[..., ID], "mouth": style[..., MOUTH], "emotion": style[..., EMOTION],
            "eye": style[..., EYE], "pose": style[..., POSE]}


def eye_mask(keep: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """The release's eye mask ``(6,)``: ``keep="gaze"`` keeps dims 2-3, ``keep="blink"`` 0,1,4,5.

    ``like`` gives the device and dtype (default CPU float32).
    """
    values = {"gaze": GAZE_MASK, "blink": BLINK_MASK}.get(keep)
    if values is None:
        raise ValueError(f"eye_mask: keep must be 'gaze' or 'blink', got {keep!r}")
    if like is None:
        return torch.tensor(values)
    return torch.tensor(values, device=like.device, dtype=like.dtype)
