"""Stage 3: expression disentanglement + generator learning (paper Fig. 2, bottom).

K consecutive frames go through the frozen E_mot backbone and the trained emotion head E_exp;
their codes are averaged (fast lip motion averages out) into f_exp. The centre frame gives
pose and eye through the frozen heads, the source frame gives appearance through the frozen
E_app, and the lips come from the frozen audio encoder. G (style 2590) rebuilds the centre.

Losses (weights in ``configs/model/stage3_emotion.yaml``):

* L_decor: decorrelation between f_exp and the audio features of the same window, estimated
  over memory banks (see :func:`pdfgc.losses.decorrelation_loss`), so expression cannot
  carry speech;
* hinge GAN + feature matching + VGG19 perceptual on the reconstruction;
* L_con (ours; the paper names it only): lip consistency. The visual lip code of the generated
  frame, read by the frozen E_mot lip head, must match the audio lip code that drove it
  (cosine distance), so the generator keeps the lips audio-driven;
* a mouth-region L1 (the authors' early generator fine-tune has one);
* emotion leakage (ours, :mod:`pdfgc.losses.leakage`): a linear adversary must not read the
  centre frame's (frozen) pose and eye codes, nor the audio lip code, from f_exp, or G would
  use the window-averaged emotion code as a second, smoothed pose and mouth input;
* emotion class (ours, off by default): where the data labels each clip's emotion (MEAD,
  SynthTalk; ``emotion`` = -1 elsewhere) a linear classifier on f_exp is trained with
  cross-entropy. The paper learns expression from reconstruction alone over about two weeks on
  4 V100s; a short run needs the labels. The classifier is a training head and is not exported.

G is initialised from the stage-1 G0 (:mod:`pdfgc.stages.generator_init`): the layers and the
identity columns of every style input are copied; at fit start the motion columns become G0's
f_mot columns composed with a ridge map from the codes to f_mot, so that G starts as G0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F

from pdfgc.checkpoints import read_state_dict
from pdfgc.losses import LinearLeakage, MemoryBank, decorrelation_loss, mouth_region_l1
from pdfgc.networks.codes import ID_DIM, MOTION_DIM, compose_style
from pdfgc.stages.base import EXPORT_FILES, StageModule, freeze, params_frozen
from pdfgc.stages.ema import make_ema
from pdfgc.stages.emotion_labels import emotion_classifier, labelled_cross_entropy
from pdfgc.stages.gan import GanStepMixin
from pdfgc.stages.generator_init import (MotionColumns, code_gain, fold_code_gain, fold_codes_into_generator, generator_from_g0,
                                        ridge_code_map)

log = logging.getLogger(__name__)


class EmotionGeneratorStage(GanStepMixin, StageModule):
    """Stage 3 LightningModule: trains the emotion head, G and D.

    Batch (``mode=emotion``): ``frames`` (B, K, 3, S, S), ``mels`` (B, K, 1, 80, 20),
    ``source`` (B, 3, S, S).
    """

    slots = ("appearance", "motion", "audio", "generator", "discriminator")
    stage_name = "stage3_emotion"
    trained_heads = ("to_emo", "emo_embed")
    sample_video_over_window = True   # the sample callback also writes a K-frame mp4 (one row per factor)

    def __init__(
        self,
        networks: Mapping,
        optimizer: Mapping,
        loss_weights: Mapping[str, float],
        vgg_weights: str | None = None,
        ema_decay: float = 0.999,
        bank_size: int = 1024,
        grad_clip: float = 5.0,
        leakage_ridge: float = 0.1,
        num_emotions: int = 8,
        g0_fold_batches: int = 32,
        g0_fold_ridge: float = 0.1,
        standardise_codes: bool = False,
    ) -> None:
        super().__init__(networks, optimizer)
        self.save_hyperparameters()
        self.setup_gan(loss_weights, grad_clip, vgg_weights)
        self.appearance = freeze(self.build("appearance"))
        self.motion = self.build("motion")
        self.audio = freeze(self.build("audio"))
        self.generator = self.build("generator")
        self.discriminator = self.build("discriminator")
        self.generator_ema = make_ema(self.generator, ema_decay)
        freeze(self.motion)
        for name in self.trained_heads:
            getattr(self.motion, name).requires_grad_(True)
        audio_dim = int(self.audio.model.fc.out_features) if hasattr(self.audio, "model") else 512
        self.exp_bank = MemoryBank(30, bank_size)
        self.audio_bank = MemoryBank(audio_dim, bank_size)
        # What f_exp must not carry: the centre frame's pose (6) and eye (6) codes, and the audio
        # lip code that already drives G's mouth (else f_exp learns the mouth a second time).
        mouth_dim = self.audio.mouth_embed[1].out_features
        self.emotion_leakage = LinearLeakage(30, 12 + mouth_dim, bank_size, leakage_ridge,
                                             factor_groups=(12, mouth_dim))
        self.emotion_classifier = emotion_classifier(30, num_emotions)
        self.g0_fold_batches = int(g0_fold_batches)
        self.g0_fold_ridge = float(g0_fold_ridge)
        self.g0_motion: MotionColumns | None = None  # set when G starts from G0; folded at fit start
        # G reads its motion codes times this gain (ours, standardise_codes); the export folds it
        # into G's style layers. A checkpoint keeps it, so a resumed run renders the same.
        self.standardise_codes = bool(standardise_codes)
        self.register_buffer("code_gain", torch.ones(MOTION_DIM))

    def init_slot_from_file(self, slot: str, directory: Path) -> bool:
        # The generator starts from stage 1's G0 when no stage-3 generator exists yet.
        if slot == "generator" and not (directory / EXPORT_FILES["generator"]).exists():
            g0 = directory / EXPORT_FILES["generator0"]
            if not g0.exists():
                return False
            state = read_state_dict(g0)
            self.g0_motion = generator_from_g0(self.generator, state)
            self.generator_ema.module.load_state_dict(self.generator.state_dict())
            return True
        return super().init_slot_from_file(slot, directory)

    def on_train_start(self) -> None:
        # Only a run that initialised G from G0 folds (a resumed run restores G as trained).
        if self.g0_motion is not None and self.g0_fold_batches > 0:
            self.fold_g0_motion(self.g0_fold_batches)
        self.g0_motion = None

    @torch.no_grad()
    def fold_g0_motion(self, max_batches: int) -> None:
        """Fit the ridge map from the codes to the centre frame's f_mot over up to ``max_batches``
        training batches (summed over DDP ranks) and fold G0's f_mot columns through it into G
        (with ``standardise_codes``, first set the code gain from the same codes)."""
        loader = self.trainer.datamodule.train_dataloader() if self.trainer.datamodule else self.trainer.train_dataloader
        was_training = self.training
        self.eval()
        codes, unified = [], []
        for index, batch in enumerate(loader):
            if index >= max_batches:
                break
            frames = batch["frames"].to(self.device)
            window = self.window_codes(frames, batch["mels"].to(self.device))
            codes.append(torch.cat([window["mouth"], window["emotion"], window["eye"], window["pose"]], 1))
            unified.append(self.motion.unified(frames[:, frames.shape[1] // 2]))
        self.train(was_training)

        def reduce_sum(t: torch.Tensor) -> torch.Tensor:
            return self.trainer.strategy.reduce(t, reduce_op="sum")

        rows = reduce_sum(torch.tensor(float(sum(len(c) for c in codes)), device=self.device))
        if rows < 2:
            log.warning("stage 3: %d training windows, too few to map the codes onto G0's f_mot; "
                        "G's motion columns start at zero", int(rows))
            return
        codes = torch.cat(codes)
        if self.standardise_codes:
            self.code_gain.copy_(code_gain(codes, reduce_sum))
        code_map, shift = ridge_code_map(codes * self.code_gain, torch.cat(unified), self.g0_fold_ridge, reduce_sum)
        fold_codes_into_generator(self.generator, self.g0_motion, code_map, shift)
        self.generator_ema.module.load_state_dict(self.generator.state_dict())
        log.info("stage 3: G starts as G0, its codes mapped onto f_mot by ridge over %d windows", int(rows))

    def keep_frozen_in_eval(self) -> None:
        for net in (self.appearance, self.motion, self.audio):
            net.eval()
        for name in self.trained_heads:
            getattr(self.motion, name).train()

    # ---- codes ----------------------------------------------------------------------------
    def window_codes(self, frames: torch.Tensor, mels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Codes of a K-frame window: f_exp averaged over K, centre pose/eye, audio mouth.

        :param frames: (B, K, 3, S, S); :param mels: (B, K, 1, 80, 20)
        """
        b, k = frames.shape[:2]
        centre = k // 2
        with torch.no_grad():
            unified = self.motion.unified(frames.flatten(0, 1))
            audio_feature, audio_mouth = self.audio(mels.flatten(0, 1))
        _, _, emotion, _ = self.motion.heads(unified)
        with torch.no_grad():
            pose, eye, _, _ = self.motion.heads(unified.view(b, k, -1)[:, centre])
        return {
            "emotion": emotion.view(b, k, -1).mean(1),
            "pose": pose,
            "eye": eye,
            "mouth": audio_mouth.view(b, k, -1)[:, centre],
            "audio_window": audio_feature.view(b, k, -1).mean(1),
        }

    def render(self, source: torch.Tensor, codes: Mapping[str, torch.Tensor], generator=None) -> torch.Tensor:
        """G(compose_style(...), id_map) -> (B, 3, S, S) in [-1, 1]."""
        generator = generator or self.generator
        with torch.no_grad():
            id_vec, id_map = self.appearance(source)
        style = compose_style(id_vec, codes["mouth"], codes["emotion"], codes["eye"], codes["pose"])
        style = torch.cat([style[:, :ID_DIM], style[:, ID_DIM:] * self.code_gain], 1)
        return generator(style, id_map)

    def network_slots(self) -> dict[str, torch.nn.Module]:
        slots = super().network_slots()
        if not torch.all(self.code_gain == 1):
            slots["generator"] = fold_code_gain(slots["generator"], self.code_gain)  # raw codes in, as the release
        return slots

    def emotion_class_loss(self, emotion: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy of the emotion classifier on f_exp ``(B, 30)`` against clip labels ``(B,)``
        (-1 = unlabelled, ignored); 0 (with a graph) when nothing in the batch is labelled."""
        return labelled_cross_entropy(self.emotion_classifier(emotion), labels)

    def lip_consistency(self, fake: torch.Tensor, audio_mouth: torch.Tensor) -> torch.Tensor:
        # The lip reader judges G's lips; it must not learn from this loss (only G does).
        with params_frozen(self.motion):
            _, _, _, mouth_feature = self.motion(fake)
            visual = self.motion.mouth_code(mouth_feature)
        return (1 - F.cosine_similarity(visual, audio_mouth.detach(), dim=1)).mean()

    # ---- steps ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        frames, mels, source = batch["frames"], batch["mels"], batch["source"]
        target = frames[:, frames.shape[1] // 2]
        codes = self.window_codes(frames, mels)
        # Frozen heads and encoder: no gradient. Pose + eye, then the audio lip code (own group).
        off_factors = torch.cat([codes["pose"], codes["eye"], codes["mouth"]], dim=1).detach()
        fake = self.render(source, codes)
        d_loss = self.discriminator_step(target, fake)

        def losses():
            terms = {**self.generator_adversarial(target, fake), **self.reconstruction_terms(fake, target)}
            if self.wants("lip_consistency"):
                terms["lip_consistency"] = self.lip_consistency(fake, codes["mouth"])
            if self.wants("decorrelation"):
                terms["decorrelation"] = decorrelation_loss(
                    codes["emotion"], codes["audio_window"], self.exp_bank, self.audio_bank)
            if self.wants("emotion_class"):
                terms["emotion_class"] = self.emotion_class_loss(codes["emotion"], batch.get("emotion"))
            if self.wants("emotion_leakage"):
                terms["emotion_leakage"] = self.emotion_leakage(codes["emotion"], off_factors)
            return terms

        terms = self.generator_step(losses)
        self.exp_bank.push(self.all_gather_flat(codes["emotion"].detach()))
        self.audio_bank.push(self.all_gather_flat(codes["audio_window"].detach()))
        self.emotion_leakage.push(self.all_gather_flat(codes["emotion"].detach()),
                                  self.all_gather_flat(off_factors))
        self.generator_ema.update_parameters(self.generator)
        self.log_dict({f"train/{k}": v for k, v in terms.items()})
        self.log("train/d_loss", d_loss)
        self.log("train/loss", terms["total"], prog_bar=True)

    def validation_step(self, batch, batch_idx):
        frames = batch["frames"]
        target = frames[:, frames.shape[1] // 2]
        codes = self.window_codes(frames, batch["mels"])
        fake = self.render(batch["source"], codes, generator=self.generator_ema.module)
        self.log("val/l1", F.l1_loss(fake, target), prog_bar=True, sync_dist=True)
        self.log("val/mouth_l1", mouth_region_l1(fake, target), sync_dist=True)
        self.log("val/lip_consistency", self.lip_consistency(fake, codes["mouth"]), sync_dist=True)

    def sample_rows(self, batch) -> dict[str, torch.Tensor]:
        """Rows: source, target, reconstruction, then each factor driven by the next sample.

        Row ``<factor> from next`` keeps every code of sample b except <factor>, taken from
        sample b+1 (cyclic): one row per control factor, as in the paper's figures.
        """
        frames = batch["frames"]
        target = frames[:, frames.shape[1] // 2]
        codes = self.window_codes(frames, batch["mels"])
        generator = self.generator_ema.module
        rows = {"source": batch["source"], "target": target,
                "reconstruction": self.render(batch["source"], codes, generator)}
        for factor in ("mouth", "pose", "eye", "emotion"):
            swapped = dict(codes)
            swapped[factor] = codes[factor].roll(1, dims=0)
            rows[f"{factor} from next"] = self.render(batch["source"], swapped, generator)
        return rows

    def configure_optimizers(self):
        generator_side = {"generator": self.generator.parameters(),
                          "emotion_head": [p for name in self.trained_heads for p in getattr(self.motion, name).parameters()]
                          + list(self.emotion_classifier.parameters())}
        return self.adam(generator_side), self.adam({"discriminator": self.discriminator.parameters()})
