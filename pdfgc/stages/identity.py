"""Optional stage 0: identity pre-training of E_app (classification over training speakers).

The release's E_app keeps the 5995-way classifier of this step (VoxCeleb2 dev speakers);
PC-AVS and the authors' early code train it with cross-entropy before stage 1.
"""

from __future__ import annotations

from typing import Mapping

import torch.nn.functional as F

from pdfgc.stages.base import StageModule


class IdentityStage(StageModule):
    """Stage 0 LightningModule. Batch (``mode=reconstruction``): ``source`` (B,3,S,S), ``speaker`` (B,)."""

    slots = ("appearance",)
    stage_name = "stage0_identity"

    def __init__(self, networks: Mapping, optimizer: Mapping) -> None:
        super().__init__(networks, optimizer)
        self.save_hyperparameters()
        self.appearance = self.build("appearance")

    def step(self, batch):
        id_vec, _ = self.appearance(batch["source"])
        logits = self.appearance.classify(id_vec)
        loss = F.cross_entropy(logits, batch["speaker"])
        accuracy = (logits.argmax(1) == batch["speaker"]).float().mean()
        return loss, accuracy

    def training_step(self, batch, batch_idx):
        loss, accuracy = self.step(batch)
        self.log_dict({"train/loss": loss, "train/accuracy": accuracy}, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        # Validation speakers are held out, so only the loss on seen speakers is meaningful;
        # we log it for the training split's val loader only when speakers overlap.
        loss, accuracy = self.step(batch)
        self.log_dict({"val/loss": loss, "val/accuracy": accuracy}, sync_dist=True)

    def configure_optimizers(self):
        return self.scheduled(self.adam(self.appearance.parameters()))
