"""Shared G/D update for the two GAN stages (manual optimisation, AMP-safe)."""

from __future__ import annotations

from typing import Callable

import torch

from pdfgc.losses import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss


class GanStepMixin:
    """One discriminator step then one generator step per batch, as the release's trainers.

    The subclass provides ``self.discriminator``, two optimisers from ``configure_optimizers``
    (generator side first) and ``self.loss_weights`` with ``gan``, ``feature_matching``.
    ``manual_backward`` keeps Lightning's AMP scaler working under 16-mixed.
    """

    grad_clip: float = 5.0

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

    def generator_adversarial(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hinge adversarial and feature-matching terms for the generator side."""
        fake_out = self.discriminator(fake)
        with torch.no_grad():
            real_out = self.discriminator(real)
        return {
            "gan": generator_hinge_loss(fake_out),
            "feature_matching": feature_matching_loss(real_out, fake_out),
        }

    def generator_step(self, compute_losses: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Run ``compute_losses`` with the generator optimiser toggled; weight, sum, step."""
        opt_g, _ = self.optimizers()
        self.toggle_optimizer(opt_g)
        terms = compute_losses()
        total = sum(self.loss_weights[name] * value for name, value in terms.items()
                    if self.loss_weights.get(name, 0.0) != 0.0)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(total)
        self.clip_gradients(opt_g, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        terms = {k: v.detach() for k, v in terms.items()}
        terms["total"] = total.detach()
        return terms
