"""Optional stage 0: landmark pre-training of E_mot's FAN backbone.

E_mot is a FAN (Bulat & Tzimiropoulos) cut after its first hourglass: the release's motion
checkpoint names its layers exactly as face-alignment's 2D-FAN does (``conv1`` … ``m0`` …
``l0``), so the backbone starts from a landmark network, whose heatmaps already locate lids,
lips, brows and the jaw. This stage gives a from-scratch E_mot that start: the ``l0`` maps
regress Gaussian heatmaps of the data's landmarks (iBUG 68, plus the two iris centres when the
network has 70 maps), as FAN is trained. Stage 1 then initialises from this export.

The unified feature f_mot is FAN's bottleneck over those maps (``bn5``, ``conv6``, ``fc``). Maps
that locate every point are not yet a feature that *says* where they are: a linear read-out of
the landmark positions from f_mot is trained alongside (``coordinate_weight``; the read-out is
this stage's own and is not exported), so the unified feature starts as a description of the
face's geometry, which stage 1 then refines. Positions alone are dominated by the head's pose;
the read-out also regresses the small differences that carry eye and mouth motion (iris in the
eye, lid gaps, lip gap, mouth width: :func:`pdfgc.losses.heatmaps.motion_offsets`,
``offset_weight``), which a pose change leaves alone. Where the data labels each clip's emotion
(MEAD, SynthTalk; ``emotion`` = -1 elsewhere) a linear classifier on f_mot can be trained too
(``emotion_weight``, ours): landmark positions leave the expression to a few pixels of brow and
mouth corner against every identity's own neutral face, and stage 3's emotion head can only read
what f_mot holds. That gradient stops at the heatmaps, which stay landmark maps. Where the data
has pose labels (``pose.npy``) and eye state (``eyes.npy``), linear read-outs of those from f_mot
can be trained as well (``pose_weight``, ``eye_weight``, ours): head translation, scale and a
vertical glance move the points by a pixel or less, under the maps' 4 px cells at 64 px. Expression
needs no labels: the read-out can also regress the landmark differences emotion moves (brows
against the lids, mouth corners against the lips' centre line, lower lids;
:func:`pdfgc.losses.heatmaps.expression_offsets`, ``expression_weight``, ours). The motion
heads have no gradient here and are frozen, so that DDP never waits for them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from pdfgc.losses.heatmaps import (NUM_EXPRESSION_OFFSETS, NUM_OFFSETS, expression_offsets, heatmap_loss, heatmap_peaks,
                                   landmark_heatmaps, motion_offsets)
from pdfgc.networks.codes import UNIFIED_MOTION_DIM
from pdfgc.stages.base import StageModule, freeze, positive_scale
from pdfgc.stages.emotion_labels import any_labelled, emotion_classifier, labelled_cross_entropy

#: E_mot parts after the landmark heatmaps: trained only through the coordinate read-out
BOTTLENECK = ("bn5", "conv6", "fc")


def scale_gradient(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``x`` unchanged forward; its gradient multiplied by ``scale`` (a number, 0 = detached, or a
    tensor broadcasting against ``x``, e.g. one share per channel ``(1, C, 1, 1)``)."""
    if not torch.is_tensor(scale):
        if scale == 0.0:
            return x.detach()
        if scale == 1.0:
            return x
    return x.detach() + scale * (x - x.detach())


def map_shares(num_maps: int, share: float, ranges: Sequence[Sequence[int]] | None) -> torch.Tensor | float:
    """Gradient share per heatmap ``(1, num_maps, 1, 1)``: ``share`` inside the half-open index
    ``ranges`` ([[17, 36]]: iBUG brows and nose), 0 elsewhere; the plain ``share`` without ranges
    or at 0 (so that a detached input spares the backward through the maps)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"emotion_map_gradient must be in [0, 1], got {share}")
    if ranges is None or share == 0.0:
        return float(share)
    shares = torch.zeros(1, num_maps, 1, 1)
    for bounds in ranges:
        if len(bounds) != 2 or not 0 <= int(bounds[0]) < int(bounds[1]) <= num_maps:
            raise ValueError(f"emotion_map_ranges: each entry is [first, end) within 0..{num_maps}, got {list(bounds)}")
        shares[:, int(bounds[0]):int(bounds[1])] = float(share)
    return shares


def known_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the finite entries of ``target`` (same shape as ``prediction``);
    0, still with a graph, when none is (so DDP gets a gradient for every read-out)."""
    known = torch.isfinite(target)
    error = torch.where(known, prediction - torch.nan_to_num(target), torch.zeros_like(prediction))
    return error.square().sum() / known.sum().clamp(min=1)


class LandmarkStage(StageModule):
    """Stage 0 (landmarks) LightningModule: trains E_mot's FAN up to its heatmaps.

    Batch (``mode=landmarks``): ``image`` (B, 3, S, S) in [-1, 1], ``landmarks`` (B, Q, 2)
    pixel (x, y) in the network input (NaN where unknown), Q >= the network's heatmap count.
    """

    slots = ("motion",)
    stage_name = "stage0_landmarks"

    def __init__(self, networks: Mapping, optimizer: Mapping, sigma: float = 1.0,
                 coordinate_weight: float = 1.0, offset_weight: float = 0.0, emotion_weight: float = 0.0,
                 num_emotions: int = 8, pose_weight: float = 0.0,
                 pose_scale: Sequence[float] = (0.3, 0.15, 0.1, 0.03, 0.03, 0.06),
                 eye_weight: float = 0.0,
                 eye_scale: Sequence[float] = (0.1, 0.1, 0.13, 0.1, 0.13, 0.1),
                 expression_weight: float = 0.0, emotion_map_gradient: float = 0.0,
                 emotion_map_ranges: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__(networks, optimizer)
        self.save_hyperparameters()
        self.motion = self.build("motion")
        self.sigma = float(sigma)
        self.coordinate_weight = float(coordinate_weight)
        self.offset_weight = float(offset_weight)
        self.emotion_weight = float(emotion_weight)
        self.expression_weight = float(expression_weight)
        # Label read-outs (ours): f_mot -> pose labels and eye state, each divided by its scale.
        self.readout_weights = {"pose": float(pose_weight), "eyes": float(eye_weight)}
        self.register_buffer("pose_scale", positive_scale(pose_scale, "pose_scale"), persistent=False)
        self.register_buffer("eyes_scale", positive_scale(eye_scale, "eye_scale"), persistent=False)
        freeze(self.motion)
        reads_out = (self.coordinate_weight or self.emotion_weight or self.expression_weight
                     or any(self.readout_weights.values()))
        for name, child in self.motion.model.named_children():
            if name not in BOTTLENECK or reads_out:
                child.requires_grad_(True)
        # f_mot -> (x, y) of every landmark in fractions of the side, centred (this stage only).
        num_points = int(self.motion.model.l0.out_channels)
        shares = map_shares(num_points, emotion_map_gradient, emotion_map_ranges)
        if torch.is_tensor(shares):
            self.register_buffer("emotion_map_shares", shares, persistent=False)
        else:
            self.emotion_map_shares = shares
        self.coordinates = torch.nn.Linear(UNIFIED_MOTION_DIM, 2 * num_points + NUM_OFFSETS)
        self.emotion_classifier = emotion_classifier(UNIFIED_MOTION_DIM, num_emotions)  # this stage only
        # f_mot -> pose / pose_scale and eye state / eye_scale (this stage only; built last, so
        # that runs without them start from the same initial weights as before).
        self.readouts = torch.nn.ModuleDict({k: torch.nn.Linear(UNIFIED_MOTION_DIM, 6) for k in self.readout_weights})
        # f_mot -> expression offsets (this stage only; built last for the same reason).
        self.expression = torch.nn.Linear(UNIFIED_MOTION_DIM, NUM_EXPRESSION_OFFSETS)
        # A head whose loss is off gets no gradient; frozen, it is left out of the optimiser and of
        # DDP's gradient reduction (which, with find_unused_parameters off, fails at the next step).
        for head, weight in ((self.coordinates, self.coordinate_weight), (self.emotion_classifier, self.emotion_weight),
                             (self.expression, self.expression_weight),
                             *((self.readouts[k], w) for k, w in self.readout_weights.items())):
            head.requires_grad_(bool(weight))

    def keep_frozen_in_eval(self) -> None:
        for name, child in self.motion.named_children():
            child.train(name == "model")

    def step(self, batch) -> dict[str, torch.Tensor]:
        heatmaps = self.motion.model.heatmaps(batch["image"])
        points = batch["landmarks"][:, :heatmaps.shape[1]]
        terms = {"heatmaps": heatmap_loss(heatmaps, points, self.image_size, self.sigma)}
        readouts = [k for k, w in self.readout_weights.items() if w and batch.get(k) is not None]
        wants_unified = self.coordinate_weight or self.expression_weight or readouts
        unified = self.motion.model.bottleneck(heatmaps) if wants_unified else None
        for key in readouts:
            # tx, ty, scale and vertical gaze move points by a pixel or less at 64 px, under the
            # maps' 4 px cells: the read-outs ask f_mot to state them.
            target = batch[key].to(unified.dtype) / getattr(self, f"{key}_scale")
            terms[key] = known_mse(self.readouts[key](unified), target)
        if self.coordinate_weight:
            read = self.coordinates(unified)
            target = points / self.image_size - 0.5
            valid = torch.isfinite(target)
            positions = read[:, :2 * points.shape[1]].view(len(points), -1, 2)
            terms["coordinates"] = torch.nn.functional.mse_loss(positions[valid], target[valid])
            if self.offset_weight:
                offsets = motion_offsets(target)
                ok = torch.isfinite(offsets)
                terms["offsets"] = torch.nn.functional.mse_loss(read[:, -NUM_OFFSETS:][ok], offsets[ok])
        if self.expression_weight:
            # Brows, mouth corners and lower lids against the face's own features: true landmarks
            # give the emotion class through these, but the maps' 4 px cells blur their 2-3 px moves.
            terms["expression"] = known_mse(self.expression(unified),
                                            expression_offsets(points / self.image_size - 0.5))
        labels = batch.get("emotion")
        if self.emotion_weight and labels is not None:
            # Mostly through the bottleneck: with its full gradient in the maps, the class (an
            # easier target) took over the hourglass and the landmark error stayed at 24 px (2 px
            # without). A small share (emotion_map_gradient) lets the maps carry what landmarks
            # cannot: the lines and folds an expression draws.
            logits = self.emotion_classifier(self.motion.model.bottleneck(
                scale_gradient(heatmaps, self.emotion_map_shares)))
            terms["emotion"] = labelled_cross_entropy(logits, labels)  # 0 with a graph when unlabelled
            if any_labelled(labels):
                known = labels >= 0
                terms["emotion_accuracy"] = (logits.argmax(1)[known] == labels[known]).float().mean().detach()
        terms["loss"] = (terms["heatmaps"] + self.coordinate_weight * terms.get("coordinates", 0.0)
                         + self.offset_weight * terms.get("offsets", 0.0)
                         + self.emotion_weight * terms.get("emotion", 0.0)
                         + self.expression_weight * terms.get("expression", 0.0)
                         + sum(w * terms.get(k, 0.0) for k, w in self.readout_weights.items()))
        with torch.no_grad():
            error = (heatmap_peaks(heatmaps, self.image_size) - points).norm(dim=-1)
            error = error[torch.isfinite(error)]
        terms["error_px"] = error.median() if error.numel() else torch.zeros(())
        return terms

    def training_step(self, batch, batch_idx):
        terms = self.step(batch)
        self.log("train/loss", terms["loss"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"})
        return terms["loss"]

    def validation_step(self, batch, batch_idx):
        terms = self.step(batch)
        self.log("val/loss", terms["loss"], sync_dist=True)
        self.log("val/error_px", terms["error_px"], prog_bar=True, sync_dist=True)
        if "emotion_accuracy" in terms:
            self.log("val/emotion_accuracy", terms["emotion_accuracy"], sync_dist=True)

    def sample_rows(self, batch) -> dict[str, torch.Tensor]:
        """Rows of the sample grid: the image, the target maps and the predicted maps (max over
        landmarks, upsampled to the image, as grey images in [-1, 1])."""
        image = batch["image"]
        heatmaps = self.motion.model.heatmaps(image)
        points = batch["landmarks"][:, :heatmaps.shape[1]]
        target = landmark_heatmaps(points, heatmaps.shape[-1], self.image_size, self.sigma)

        def as_image(maps: torch.Tensor) -> torch.Tensor:
            peak = maps.amax(1, keepdim=True).clamp(0, 1)
            peak = torch.nn.functional.interpolate(peak, size=image.shape[-2:], mode="nearest")
            return (peak * 2 - 1).expand(-1, 3, -1, -1)

        return {"image": image, "target_heatmaps": as_image(target), "heatmaps": as_image(heatmaps)}

    def configure_optimizers(self):
        return self.scheduled(self.adam({
            "motion": self.motion.parameters(), "coordinates": self.coordinates.parameters(),
            "emotion_classifier": self.emotion_classifier.parameters(),
            "readouts": self.readouts.parameters(), "expression": self.expression.parameters()}))
