"""Contrastive losses of stage 2: audio-visual lip InfoNCE (L_a2v, L_v2a), eye triplet (L_eye)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["audio_visual_infonce", "eye_triplet_loss", "pairwise_similarity"]

# Defaults chosen by us (the paper's values are not public; see docs in each function).
DEFAULT_INFONCE_TEMPERATURE = 0.1
DEFAULT_EYE_TEMPERATURE = 0.1
_DIST_EPS = 1e-2


def pairwise_similarity(anchors: torch.Tensor, candidates: torch.Tensor,
                        similarity: str = "cosine", eps: float = _DIST_EPS) -> torch.Tensor:
    """Similarities of anchors ``(..., N, D)`` to candidates ``(..., M, D)``, L2-normalised first.

    ``"cosine"``: ``s_jk = <a_j, c_k>`` (in ``[-1, 1]``).
    ``"inverse_distance"``: ``s_jk = 1 / (||a_j - c_k||_2 + eps)`` (PC-AVS / authors' early code;
    in ``[1 / (2 + eps), 1 / eps]``).

    Inputs are normalised here; returns ``(..., N, M)`` in float32.
    """
    a = F.normalize(anchors.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    if similarity == "cosine":
        return a @ c.transpose(-1, -2)
    if similarity == "inverse_distance":
        # ||a - c||^2 = 2 - 2<a, c> for unit vectors; the small floor keeps sqrt differentiable
        # at zero distance.
        sq = (2.0 - 2.0 * (a @ c.transpose(-1, -2))).clamp_min(0.0)
        dist = torch.sqrt(sq + 1e-12)
        return 1.0 / (dist + eps)
    raise ValueError(f"unknown similarity {similarity!r}; use 'cosine' or 'inverse_distance'")


def audio_visual_infonce(
    visual: torch.Tensor,
    audio: torch.Tensor,
    temperature: float = DEFAULT_INFONCE_TEMPERATURE,
    similarity: str = "cosine",
    detach_candidates: bool = False,
    eps: float = _DIST_EPS,
) -> dict[str, torch.Tensor]:
    """Symmetric audio-visual InfoNCE for lip sync, **L_a2v + L_v2a** (paper Fig. 2, stage 2).

    Within each clip ``b`` the ``N`` time steps give an ``N x N`` similarity matrix; time step
    ``i``'s positive is the other modality at the same step ``i`` and its negatives are the
    other ``N - 1`` (time-shifted) steps of the *same* clip, so identity, appearance and
    recording conditions cannot be used to solve the task (the authors' early
    ``SoftmaxContrastiveLoss_negsample``). Features are L2-normalised, then

    ``L_a2v = mean_{b,i} -log softmax_j( s(a_{b,i}, v_{b,j}) / tau )[i]``   (anchor audio)
    ``L_v2a = mean_{b,i} -log softmax_j( s(v_{b,i}, a_{b,j}) / tau )[i]``   (anchor visual)

    with ``s`` cosine (our default) or inverse Euclidean distance (PC-AVS / early code).

    Args:
        visual: ``(B, N, D)`` visual lip features ``f^v = E_lip(f_mot)``.
        audio: ``(B, N, D)`` audio features ``f^a = E_aud(mel)`` of the same time steps.
        temperature: ``tau``. Our default 0.1 for cosine (logits in ``[-10, 10]``). For
            ``"inverse_distance"`` the similarity already lies in ``[~0.5, 1/eps]``; use
            ``tau`` around 1.
        similarity: ``"cosine"`` or ``"inverse_distance"``.
        detach_candidates: the early code's form: the candidates are detached in each
            direction, so ``L_a2v`` trains only the audio side and ``L_v2a`` only the visual
            side. Default False: both directions train both encoders.
        eps: distance offset for ``"inverse_distance"``.

    Returns:
        dict with float32 tensors: ``a2v``, ``v2a`` (scalar losses), ``loss`` (= ``a2v + v2a``,
        unweighted; the early code's weight is 100), ``a2v_accuracy``, ``v2a_accuracy`` and
        ``accuracy`` (their mean): top-1 accuracy of picking the matching step among the N,
        detached, for logging; chance is ``1/N``.
    """
    if visual.shape != audio.shape or visual.dim() != 3:
        raise ValueError(
            f"visual and audio must both be (B, N, D); got {tuple(visual.shape)} and "
            f"{tuple(audio.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    B, N, _ = visual.shape
    target = torch.arange(N, device=visual.device).repeat(B)

    a_cand = visual.detach() if detach_candidates else visual
    v_cand = audio.detach() if detach_candidates else audio
    logits_a2v = pairwise_similarity(audio, a_cand, similarity, eps) / temperature  # (B,N,N)
    logits_v2a = pairwise_similarity(visual, v_cand, similarity, eps) / temperature

    a2v = F.cross_entropy(logits_a2v.reshape(B * N, N), target)
    v2a = F.cross_entropy(logits_v2a.reshape(B * N, N), target)
    with torch.no_grad():
        a2v_acc = (logits_a2v.reshape(B * N, N).argmax(-1) == target).float().mean()
        v2a_acc = (logits_v2a.reshape(B * N, N).argmax(-1) == target).float().mean()
    return {
        "a2v": a2v,
        "v2a": v2a,
        "loss": a2v + v2a,
        "a2v_accuracy": a2v_acc,
        "v2a_accuracy": v2a_acc,
        "accuracy": 0.5 * (a2v_acc + v2a_acc),
    }


def eye_triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    temperature: float = DEFAULT_EYE_TEMPERATURE,
) -> torch.Tensor:
    """Eye contrastive loss **L_eye** on E_eye codes of a synthetic triplet (paper Fig. 2).

    The anchor image is the negative image with the positive image's eye strip pasted in, so
    anchor and positive share eye motion (gaze, blink) while anchor and negative share
    everything else. With cosine similarity ``c(.,.)``:

    ``L_eye = mean_b -log[ e^{c(a,p)/tau} / (e^{c(a,p)/tau} + e^{c(a,n)/tau}) ]``
    ``      = mean_b softplus( (c(a,n) - c(a,p)) / tau )``

    Args:
        anchor, positive, negative: ``(B, D)`` eye codes (D = 6), not normalised.
        temperature: ``tau``; our default 0.1 (the paper's value is not public).

    Returns:
        Scalar float32 tensor; ``log 2`` when both similarities are equal.
    """
    if not (anchor.shape == positive.shape == negative.shape) or anchor.dim() != 2:
        raise ValueError(
            "anchor, positive, negative must all be (B, D); got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a = anchor.float()
    sim_p = F.cosine_similarity(a, positive.float(), dim=-1, eps=1e-8)
    sim_n = F.cosine_similarity(a, negative.float(), dim=-1, eps=1e-8)
    return F.softplus((sim_n - sim_p) / temperature).mean()
