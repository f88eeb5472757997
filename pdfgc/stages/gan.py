"""Shared G/D update for the two GAN stages (manual optimisation, AMP-safe)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pdfgc.losses import (EYE_STRIP, VGGPerceptualLoss, discriminator_hinge_loss, feature_matching_loss,
                          generator_hinge_loss, mouth_region_l1)


class GanStepMixin:
    """One discriminator step then one generator step per batch, as the release's trainers.

    The subclass calls :meth:`setup_gan` in its ``__init__`` and provides
    ``self.discriminator`` and two optimisers from ``configure_optimizers`` (generator side
    first); a term whose weight is 0 is not computed at all (the CPU configurations skip the
    VGG19 this way).
    ``manual_backward`` keeps Lightning's AMP scaler working under 16-mixed.
    """

    grad_clip: float = 5.0
    #: Under DDP the D backward leaves G's parameters without gradients (and the G backward
    #: D's, when the adversarial terms are off): DDP must search for unused parameters.
    ddp_find_unused_parameters: bool = True

    def setup_gan(self, loss_weights, grad_clip: float, vgg_weights: str | None) -> None:
        """Manual optimisation, the loss weights, and the VGG19 only when its weight is non-zero."""
        self.automatic_optimization = False
        self.loss_weights = dict(loss_weights)
        self.grad_clip = grad_clip
        # The VGG19 is the costliest part of a CPU step: built only when used.
        self.perceptual = VGGPerceptualLoss(weights_path=vgg_weights) if self.wants("perceptual") else None

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        _, opt_d = self.optimizers()
        self.toggle_optimizer(opt_d)
        d_loss = discriminator_hinge_loss(self.discriminator(real), self.discriminator(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        self.clip_gradients(opt_d, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        return d_loss.detach()

    def wants(self, name: str) -> bool:
        """Whether loss term ``name`` has a non-zero weight (terms at weight 0 are not computed)."""
        return self.loss_weights.get(name, 0.0) != 0.0

    def generator_adversarial(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hinge adversarial and feature-matching terms for the generator side."""
        terms: dict[str, torch.Tensor] = {}
        if not (self.wants("gan") or self.wants("feature_matching")):
            return terms
        fake_out = self.discriminator(fake)
        terms["gan"] = generator_hinge_loss(fake_out)
        if self.wants("feature_matching"):
            with torch.no_grad():
                real_out = self.discriminator(real)
            terms["feature_matching"] = feature_matching_loss(real_out, fake_out)
        return terms

    def reconstruction_terms(self, fake: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image terms shared by the GAN stages: VGG19 perceptual, pixel L1, region L1s."""
        terms: dict[str, torch.Tensor] = {}
        if self.wants("perceptual"):
            terms["perceptual"] = self.perceptual(fake, target)
        if self.wants("l1"):
            terms["l1"] = F.l1_loss(fake, target)
        if self.wants("mouth_l1"):
            terms["mouth_l1"] = mouth_region_l1(fake, target)
        if self.wants("eye_l1"):
            terms["eye_l1"] = mouth_region_l1(fake, target, mouth_box=EYE_STRIP)
        return terms

    def generator_step(self, compute_losses: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Run ``compute_losses`` with the generator optimiser toggled; weight, sum, step."""
        opt_g, _ = self.optimizers()
        self.toggle_optimizer(opt_g)
        terms = compute_losses()
        total = sum(self.loss_weights[name] * value for name, value in terms.items() if self.wants(name))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(total)
        self.clip_gradients(opt_g, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        terms = {k: v.detach() for k, v in terms.items()}
        terms["total"] = total.detach()
        return terms
