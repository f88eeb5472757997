"""Stage 1: appearance / unified-motion disentanglement by self-driven reconstruction.

E_app(source) and E_mot(augmented driver) of the same clip feed G0
(style = [id 2048 | unified motion 512]) which rebuilds the clean driver (paper Fig. 2, top).

Losses (weights in ``configs/model/stage1_unified_motion.yaml``):
hinge GAN (multi-scale D), D feature matching, VGG19 perceptual, and L_mot.

L_mot is not defined by any public source; ours is a motion-consistency term: the unified
motion feature re-extracted from the generated frame must equal the one that drove it,
``|E_mot(G0(.)) - sg(f_mot)|_1``, so G0 cannot ignore or distort the motion it is given. The
gradient reaches G0 only: if it could move E_mot, a constant motion feature would satisfy it
(we saw exactly that collapse within 30 steps).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from pdfgc.losses import EYE_STRIP, mouth_region_l1
from pdfgc.networks.codes import ID_DIM
from pdfgc.stages.augment import DriverAugment
from pdfgc.stages.base import StageModule, freeze, params_frozen
from pdfgc.stages.ema import make_ema
from pdfgc.stages.gan import GanStepMixin

UNIFIED_DIM = 512


class UnifiedMotionStage(GanStepMixin, StageModule):
    """Stage 1 LightningModule: trains E_app, the E_mot backbone (unless ``train_motion`` is
    false: an E_mot from the landmark stage kept as it is), G0 and D.

    Batch (``mode=reconstruction``): ``source``, ``driver`` (B, 3, S, S) in [-1, 1],
    ``speaker`` (B,).
    """

    slots = ("appearance", "motion", "generator0", "discriminator")
    stage_name = "stage1_unified_motion"

    def __init__(
        self,
        networks: Mapping,
        optimizer: Mapping,
        loss_weights: Mapping[str, float],
        augment: Mapping | None = None,
        vgg_weights: str | None = None,
        ema_decay: float = 0.999,
        freeze_appearance_bn: bool = True,
        grad_clip: float = 5.0,
        freeze_motion_bn: bool = False,
        train_motion: bool = True,
    ) -> None:
        super().__init__(networks, optimizer)
        self.save_hyperparameters()
        self.setup_gan(loss_weights, grad_clip, vgg_weights)
        self.appearance = self.build("appearance")
        self.motion = self.build("motion")
        self.generator0 = self.build("generator0", style_dim=ID_DIM + UNIFIED_DIM)
        self.discriminator = self.build("discriminator")
        self.generator0_ema = make_ema(self.generator0, ema_decay)
        self.augment = DriverAugment(**(augment or {}))
        self.freeze_appearance_bn = freeze_appearance_bn
        self.freeze_motion_bn = freeze_motion_bn
        self.train_motion = train_motion
        if not train_motion:  # E_mot given (landmark stage): G0 learns to render from its feature
            freeze(self.motion)

    def keep_frozen_in_eval(self) -> None:
        # The release fixes E_app's batch norm (`fix_bn`): its statistics come from the
        # identity pre-training and must not drift with small GAN batches. E_mot's may be fixed
        # too when it comes pre-trained (landmark stage): it sees colour-jittered drivers here,
        # whose statistics would replace those of the clean frames every later stage feeds it.
        if not getattr(self, "train_motion", True):
            self.motion.eval()
        for net, fixed in ((self.appearance, getattr(self, "freeze_appearance_bn", False)),
                           (self.motion, getattr(self, "freeze_motion_bn", False))):
            if fixed:
                for m in net.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()

    def reconstruct(self, source: torch.Tensor, driver: torch.Tensor, generator=None):
        """G0([E_app(source) | E_mot(driver)]) -> ((B,3,S,S), f_mot (B,512))."""
        generator = generator or self.generator0
        id_vec, id_map = self.appearance(source)
        f_mot = self.motion.unified(driver)
        return generator(torch.cat([id_vec, f_mot], dim=1), id_map), f_mot

    def training_step(self, batch, batch_idx):
        source, driver = batch["source"], batch["driver"]
        with torch.no_grad():
            driver_aug = self.augment(driver)

        # One generator forward serves both updates: D sees it detached, then G's losses use it.
        fake, f_mot = self.reconstruct(source, driver_aug)
        d_loss = self.discriminator_step(driver, fake)

        def losses():
            terms = {**self.generator_adversarial(driver, fake), **self.reconstruction_terms(fake, driver)}
            if self.wants("motion"):
                with params_frozen(self.motion):
                    terms["motion"] = F.l1_loss(self.motion.unified(fake), f_mot.detach())
            return terms

        terms = self.generator_step(losses)
        self.generator0_ema.update_parameters(self.generator0)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False)
        self.log("train/d_loss", d_loss)
        self.log("train/loss", terms["total"], prog_bar=True)

    def validation_step(self, batch, batch_idx):
        fake, _ = self.reconstruct(batch["source"], batch["driver"], generator=self.generator0_ema.module)
        self.log("val/l1", F.l1_loss(fake, batch["driver"]), prog_bar=True, sync_dist=True)
        self.log("val/eye_l1", mouth_region_l1(fake, batch["driver"], mouth_box=EYE_STRIP), sync_dist=True)
        self.log("val/mouth_l1", mouth_region_l1(fake, batch["driver"]), sync_dist=True)

    def sample_rows(self, batch) -> dict[str, torch.Tensor]:
        """Rows of the sample grid: source, driver, augmented driver, EMA reconstruction."""
        driver_aug = self.augment(batch["driver"])
        fake, _ = self.reconstruct(batch["source"], driver_aug, generator=self.generator0_ema.module)
        return {"source": batch["source"], "driver": batch["driver"], "driver_aug": driver_aug,
                "reconstruction": fake}

    def configure_optimizers(self):
        generator_side = {"appearance": self.appearance.parameters(), "motion": self.motion.parameters(),
                          "generator0": self.generator0.parameters()}
        return self.adam(generator_side), self.adam({"discriminator": self.discriminator.parameters()})
