"""Stage 2: fine-grained motion disentanglement on the frozen unified motion feature.

Three heads on f_mot (paper Fig. 2, middle), the E_mot backbone frozen:

* lip: audio-visual InfoNCE both ways (L_a2v + L_v2a) between the visual lip code
  E_lip(f_mot) and the audio code E_aud(mel); the negatives of a frame are the other,
  time-shifted steps of the same clip, so identity and appearance cannot solve the task;
* pose: L1 regression of the 6-d pose head to the per-frame pose labels of the data;
* eye: the triplet contrastive loss whose anchor is the negative frame with the positive
  frame's eye strip pasted in (anchor and positive share only the eyes), plus an optional
  openness term that regresses each of the release's blink dims (0, 1 -> one eye; 4, 5 ->
  the other) to that eye's openness when the data provides it (SynthTalk ground truth; eye aspect ratio of landmarks on real data),
  so blink and gaze live in the dims the release's masks expect;
* lip leakage (ours, :mod:`pdfgc.losses.leakage`): the visual lip code must not let a linear
  adversary read the pose labels or the (detached) eye code of its frame, nor, with
  ``lip_leakage_emotions``, the clip's emotion class where clips are labelled. f_mot carries
  pose, blinks and the expression's mouth shape, and the InfoNCE (whose negatives share the
  clip's emotion) alone keeps whatever of them the lip code copies;
* lip clip leakage (ours, ``loss_weights.lip_clip_leakage``): a second adversary must not read
  the clip's emotion class from the clip's *mean* lip code. An expression moves the jaw by a
  constant per clip (SynthTalk: surprise opens it, anger narrows it); a per-frame adversary barely
  sees that offset under the speech's own swing, the clip mean shows it alone. The InfoNCE cannot
  remove it either: its negatives come from the same clip and share the offset;
* lip audio match (ours, ``loss_weights.lip_audio_match``): the visual lip code regresses the
  detached audio code of its frame; ``lip_code_fold: audio`` (with ``lip_code_rank``) then makes
  the code, after training, its rank-k linear prediction of the audio code;
* eye gaze (ours, ``eye_gaze``): the gaze dims (2, 3) regress the irises' mean offset.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch
import torch.nn.functional as F

from pdfgc.losses import audio_visual_infonce, eye_triplet_loss
from pdfgc.losses import LinearLeakage, MemoryBank
from pdfgc.networks.codes import BLINK_DIMS, GAZE_DIMS
from pdfgc.stages.base import StageModule, freeze, positive_scale

log = logging.getLogger(__name__)


class FineMotionStage(StageModule):
    """Stage 2 LightningModule: trains E_aud and the lip, pose and eye heads of E_mot.

    Batch (``mode=fine_motion``): ``frames`` (B, N, 3, S, S), ``mels`` (B, N, 1, 80, 20),
    ``pose`` (B, N, 6), ``eye_anchor``/``eye_positive``/``eye_negative`` (B, 3, S, S) and
    optionally ``eye_open`` (B, 2) for the positive frame.
    """

    slots = ("motion", "audio")
    stage_name = "stage2_fine_motion"
    trained_heads = ("to_mouth", "mouth_embed", "to_headpose", "headpose_embed", "to_eye", "eye_embed")

    def __init__(
        self,
        networks: Mapping,
        optimizer: Mapping,
        loss_weights: Mapping[str, float],
        lip_temperature: float = 0.1,
        lip_similarity: str = "cosine",
        eye_temperature: float = 0.1,
        pose_scale: tuple[float, ...] | None = None,
        leakage_bank_size: int = 1024,
        leakage_ridge: float = 0.1,
        gaze_scale: float = 0.1,
        lip_leakage_emotions: int = 0,
        lip_code_rank: int = 0,
        lip_code_fold: str = "pca",
        lip_fold_bank_size: int = 4096,
        lip_fold_ridge: float = 0.01,
    ) -> None:
        super().__init__(networks, optimizer)
        self.save_hyperparameters()
        self.loss_weights = dict(loss_weights)
        # The six pose labels differ in scale by 10x (yaw ~0.3 rad, tx ~0.03 of the side): the L1
        # is taken on label / scale so that every dimension counts, the head still outputs labels.
        scale = torch.ones(6) if pose_scale is None else positive_scale(pose_scale, "pose_scale")
        self.register_buffer("pose_scale", scale, persistent=False)
        self.motion = self.build("motion")
        self.audio = self.build("audio")
        self.lip_temperature = lip_temperature
        self.lip_similarity = lip_similarity
        self.eye_temperature = eye_temperature
        if gaze_scale <= 0:
            raise ValueError(f"gaze_scale must be positive, got {gaze_scale}")
        self.gaze_scale = float(gaze_scale)
        lip_dim = self.motion.mouth_embed[1].out_features
        # What the lip code must not carry: the 6 pose labels, the 6 eye-code dims and, where clips
        # are labelled, the emotion class as one-hot columns (unlabelled rows: all zero).
        self.lip_leakage_emotions = int(lip_leakage_emotions)
        self.lip_leakage = LinearLeakage(lip_dim, 12 + self.lip_leakage_emotions, leakage_bank_size, leakage_ridge)
        # Built only when weighted, so that checkpoints of runs without it keep their keys.
        self.lip_clip_leakage = None
        if self.loss_weights.get("lip_clip_leakage", 0.0):
            if not self.lip_leakage_emotions:
                raise ValueError("loss_weights.lip_clip_leakage needs lip_leakage_emotions > 0 "
                                 "(the number of emotion classes its adversary reads)")
            self.lip_clip_leakage = LinearLeakage(lip_dim, self.lip_leakage_emotions, leakage_bank_size, leakage_ridge)
        if lip_code_rank < 0 or lip_code_rank > lip_dim:
            raise ValueError(f"lip_code_rank must be in [0, {lip_dim}], got {lip_code_rank}")
        self.lip_code_rank = int(lip_code_rank)
        if lip_code_fold not in ("pca", "audio"):
            raise ValueError(f"lip_code_fold must be 'pca' or 'audio', got {lip_code_fold!r}")
        self.lip_code_fold = lip_code_fold
        self.lip_fold_ridge = float(lip_fold_ridge)
        # (visual, audio) lip-code pairs for the audio fold; built only then, so that other
        # runs keep their checkpoint keys.
        self.lip_fold_banks = None
        if self.lip_code_rank and lip_code_fold == "audio":
            # The InfoNCE compares the two codes, so they have one width.
            self.lip_fold_banks = torch.nn.ModuleDict({"visual": MemoryBank(lip_dim, lip_fold_bank_size),
                                                       "audio": MemoryBank(lip_dim, lip_fold_bank_size)})
        self.freeze_backbone()

    def freeze_backbone(self) -> None:
        """Freeze everything of E_mot except the three heads this stage trains."""
        freeze(self.motion)
        for name in self.trained_heads:
            getattr(self.motion, name).requires_grad_(True)

    def keep_frozen_in_eval(self) -> None:
        self.motion.eval()  # frozen backbone (BN statistics, dropout); the trained heads train
        for name in self.trained_heads:
            getattr(self.motion, name).train()

    def codes(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image codes from the frozen unified feature: lip (B,500), pose (B,6), eye (B,6)."""
        with torch.no_grad():
            unified = self.motion.unified(images)
        pose, eye, emotion, mouth_feature = self.motion.heads(unified)
        return {"lip": self.motion.mouth_code(mouth_feature), "pose": pose, "eye": eye}

    def losses(self, batch) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Loss terms (and ``total``), plus the detached rows for the leakage banks:
        ``{"lip": (lip codes (B*N, D), off-factors (B*N, 12+C))}`` and, with ``lip_clip_leakage``,
        ``"lip_clip": (clip-mean lip codes (B, D), one-hot emotions (B, C))``."""
        frames, mels = batch["frames"], batch["mels"]
        b, n = frames.shape[:2]
        codes = self.codes(frames.flatten(0, 1))
        _, audio_lip = self.audio(mels.flatten(0, 1))
        lip = audio_visual_infonce(codes["lip"].view(b, n, -1), audio_lip.view(b, n, -1),
                                   temperature=self.lip_temperature, similarity=self.lip_similarity)
        terms = {
            "lip": lip["loss"],
            "lip_accuracy": lip.get("accuracy", torch.zeros(())).detach(),
            "pose": F.l1_loss(codes["pose"] / self.pose_scale,
                              batch["pose"].flatten(0, 1).to(codes["pose"].dtype) / self.pose_scale),
        }
        pose_labels = batch["pose"].flatten(0, 1).to(codes["lip"].dtype)
        off_factors = torch.cat([pose_labels, codes["eye"].detach(), self.emotion_columns(batch, n)], dim=1)
        if self.loss_weights.get("lip_leakage", 0.0):
            terms["lip_leakage"] = self.lip_leakage(codes["lip"], off_factors)
        if self.loss_weights.get("lip_audio_match", 0.0):
            # Ours: the visual lip code regresses its frame's (detached) audio code, relative to
            # the audio codes' spread (1 = no better than their mean); what the audio cannot know
            # (the expression's jaw drop, the speaker's lips) then has no place in it.
            target = audio_lip.detach()
            spread = target.var(0, unbiased=False).mean().clamp_min(1e-6)
            terms["lip_audio_match"] = F.mse_loss(codes["lip"], target) / spread
        bank_rows = {"lip": (codes["lip"].detach(), off_factors)}
        if self.lip_fold_banks is not None:
            bank_rows["lip_fold"] = (codes["lip"].detach(), audio_lip.detach())
        if self.lip_clip_leakage is not None:
            clip_lip = codes["lip"].view(b, n, -1).mean(1)
            clip_emotion = self.emotion_columns(batch, 1)
            terms["lip_clip_leakage"] = self.lip_clip_leakage(clip_lip, clip_emotion)
            bank_rows["lip_clip"] = (clip_lip.detach(), clip_emotion)
        eyes = self.codes(torch.cat([batch["eye_anchor"], batch["eye_positive"], batch["eye_negative"]]))["eye"]
        anchor, positive, negative = eyes.chunk(3)
        terms["eye"] = eye_triplet_loss(anchor, positive, negative, temperature=self.eye_temperature)
        if "eye_open" in batch and self.loss_weights.get("eye_openness", 0.0):
            # Two dims per eye carry blink in the release (0, 1 and 4, 5): regress each to its
            # eye's openness, so blink dims hold nothing else and gaze must live in dims 2-3.
            blink = positive[:, list(BLINK_DIMS)]
            target = batch["eye_open"].to(blink.dtype).repeat_interleave(2, dim=1)
            terms["eye_openness"] = F.l1_loss(blink, target)
        if "eye_gaze" in batch and self.loss_weights.get("eye_gaze", 0.0):
            # Ours: dims 2-3 regress the irises' mean offset (x, y; eye widths, / gaze_scale), so
            # that gaze is stated there, not only told apart by the triplet (NaN: unknown iris).
            gaze = positive[:, list(GAZE_DIMS)]
            target = batch["eye_gaze"].to(gaze.dtype) / self.gaze_scale
            known = torch.isfinite(target)
            if bool(known.any()):
                terms["eye_gaze"] = F.l1_loss(gaze[known], target[known])
        total = sum(self.loss_weights.get(k, 0.0) * v for k, v in terms.items() if not k.endswith("accuracy"))
        terms["total"] = total
        return terms, bank_rows

    def emotion_columns(self, batch, steps: int) -> torch.Tensor:
        """``(B*steps, lip_leakage_emotions)`` one-hot of each clip's ``emotion`` label per time
        step (zeros for -1 = unlabelled, and for data without labels); ``(B*steps, 0)`` when off."""
        frames = batch["frames"]
        rows = frames.shape[0] * steps
        labels = batch.get("emotion")
        if not self.lip_leakage_emotions or labels is None:
            return frames.new_zeros(rows, self.lip_leakage_emotions)
        labels = labels.long().repeat_interleave(steps)
        one_hot = F.one_hot((labels + 1).clamp(min=0), self.lip_leakage_emotions + 1)[:, 1:]
        return one_hot.to(frames.dtype)

    def training_step(self, batch, batch_idx):
        terms, bank_rows = self.losses(batch)
        pushers = self.bank_pushers()
        for name, (code, paired) in bank_rows.items():
            pushers[name](self.all_gather_flat(code), self.all_gather_flat(paired))
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()})
        self.log("train/loss", terms["total"].detach(), prog_bar=True)
        return terms["total"]

    def bank_pushers(self) -> dict:
        """Where each of ``losses``' bank rows goes, by name: ``push(code, paired)`` of the leakage
        adversaries (paired = the factors it must not predict) and of the lip fold (paired = audio)."""
        pushers = {"lip": self.lip_leakage.push}
        if self.lip_clip_leakage is not None:
            pushers["lip_clip"] = self.lip_clip_leakage.push
        if self.lip_fold_banks is not None:
            pushers["lip_fold"] = self.push_lip_fold_pair
        return pushers

    def push_lip_fold_pair(self, visual: torch.Tensor, audio: torch.Tensor) -> None:
        """Bank ``(N, D)`` visual lip codes with their frames' ``(N, D)`` audio codes (``lip_code_fold: audio``)."""
        self.lip_fold_banks["visual"].push(visual)
        self.lip_fold_banks["audio"].push(audio)

    def validation_step(self, batch, batch_idx):
        terms, _ = self.losses(batch)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)
        self.log("val/loss", terms["total"], prog_bar=True, sync_dist=True)

    def sample_rows(self, batch) -> dict[str, torch.Tensor]:
        """Rows of the sample grid: the eye triplets (anchor = negative + positive's eyes)."""
        return {"eye_positive": batch["eye_positive"], "eye_anchor": batch["eye_anchor"],
                "eye_negative": batch["eye_negative"]}

    def on_train_end(self) -> None:
        if not self.lip_code_rank:
            return
        fold = self.fold_lip_onto_audio if self.lip_code_fold == "audio" else self.fold_lip_projection
        fold(self.lip_code_rank)

    @staticmethod
    def enough_codes_to_fold(count: int, rank: int) -> bool:
        """Whether ``count`` banked codes can fit a rank-``rank`` fold; a debug run of a step or
        two has too few, and its lip head is then left as trained (with a warning)."""
        if count > 2 * rank:
            return True
        log.warning("lip_code_rank=%d: only %d banked lip codes, the lip head is left as trained", rank, count)
        return False

    @torch.no_grad()
    def fold_lip_onto_audio(self, rank: int) -> None:
        """Make the lip code the rank-``rank`` linear prediction of its frame's audio code (ours,
        ``lip_code_fold: audio``).

        A frame shows more than the audio can know (on SynthTalk the expression's jaw drop); the
        part of the visual lip code that predicts the audio code is the part that is speech. On
        the banked (visual ``x``, audio ``a``) pairs: the ridge map ``B`` from standardised ``x̂``
        to centred ``a`` (``lip_fold_ridge``), reduced to the top-``rank`` principal directions
        ``V`` of its fitted values (reduced-rank regression), ``x' = m_a + x̂ B V Vᵀ``. Affine,
        so folded into the lip head's last Linear like the PCA fold: official keys and shapes.
        """
        visual = self.lip_fold_banks["visual"].get().double()
        audio = self.lip_fold_banks["audio"].get().double()
        if not self.enough_codes_to_fold(len(visual), rank):
            return
        mean, std = visual.mean(0), visual.std(0) + 1e-5
        z = (visual - mean) / std
        audio_mean = audio.mean(0)
        gram = z.T @ z / len(z) + self.lip_fold_ridge * torch.eye(z.shape[1], dtype=z.dtype)
        ridge_map = torch.linalg.solve(gram, z.T @ (audio - audio_mean) / len(z))  # (D, Da)
        directions = torch.linalg.svd(z @ ridge_map, full_matrices=False)[2][:rank]  # (rank, Da)
        fold = (ridge_map @ directions.T @ directions).T / std[None, :]  # (Da, D)
        self.fold_affine_into_lip_head(fold, audio_mean - fold @ mean)

    @torch.no_grad()
    def fold_lip_projection(self, rank: int) -> None:
        """Keep only the lip code's ``rank`` leading principal directions (ours, ``lip_code_rank``).

        The InfoNCE shapes a few directions of the 500-d code; the rest copies what f_mot also
        holds (on SynthTalk, the emotion class, where the ridge adversary does not look). The
        projection onto the top-``rank`` principal components of the banked codes (standardised
        columns), ``x' = m + D P D^-1 (x - m)``, is affine, so it is folded into the lip head's
        last Linear: official keys and shapes, no new layer. The bank is all-gathered, so every
        DDP rank folds the same.
        """
        codes = self.lip_leakage.code_bank.get().double()
        if not self.enough_codes_to_fold(len(codes), rank):
            return
        mean, std = codes.mean(0), codes.std(0) + 1e-5
        _, _, vh = torch.linalg.svd((codes - mean) / std, full_matrices=False)
        basis = vh[:rank]
        fold = std[:, None] * (basis.T @ basis) / std[None, :]  # D P D^-1, (500, 500)
        self.fold_affine_into_lip_head(fold, mean - fold @ mean)

    @torch.no_grad()
    def fold_affine_into_lip_head(self, fold: torch.Tensor, shift: torch.Tensor) -> None:
        """Make the lip head output ``fold @ x + shift`` where it output ``x``: ``fold`` ``(D, D)``,
        ``shift`` ``(D,)`` (float64). Composed into ``mouth_embed[1]``, the head's last Linear, so
        the weights keep the official keys and shapes."""
        linear = self.motion.mouth_embed[1]
        weight, bias = linear.weight.double(), linear.bias.double()
        linear.weight.copy_((fold @ weight).to(linear.weight.dtype))
        linear.bias.copy_((fold @ bias + shift).to(linear.bias.dtype))

    def configure_optimizers(self):
        return self.scheduled(self.adam(list(self.motion.parameters()) + list(self.audio.parameters())))
