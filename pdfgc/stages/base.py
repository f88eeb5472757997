"""What every progressive stage shares: network construction, freezing, init-from, export.

Each stage is a LightningModule that composes the *shared* networks of
:mod:`pdfgc.networks` (never a copy per stage). Two operations are kept apart, as in NeMo:

* **resume** (``train.py ckpt_path=last``): Lightning restores the full state of this module
  (all networks, the EMA generator, memory banks), the optimisers and the loop;
* **init from a previous stage** (``train.py init_from=<export dir>``): only network weights are
  read from the previous stage's export (:meth:`StageModule.init_from_export`).

Export (:meth:`StageModule.export`) writes the official four-file layout plus sidecars and is
separate from training checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pdfgc.checkpoints import OFFICIAL_FILES, read_state_dict
from pdfgc.errors import PdfgcError
from pdfgc.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

# Export file of each network slot. The first four are the official release's names; the
# stage-1 generator G0 (style 2048 + 512) and the discriminator are ours, kept so that a
# later stage can start from them.
EXPORT_FILES = {
    **OFFICIAL_FILES,
    "generator0": "generator0_model.pth",
    "discriminator": "discriminator_model.pth",
}
NETWORKS_SIDECAR = "networks.yaml"
STAGE_SIDECAR = "stage.yaml"


@contextlib.contextmanager
def params_frozen(module: nn.Module):
    """Within the block, ``module`` passes gradients to its *inputs* but not to its parameters.

    For consistency losses that re-encode a generated image: the encoder is the judge, and
    letting the loss move the judge would let it collapse (a constant code satisfies them all).
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def positive_scale(values: Iterable[float], name: str, size: int = 6) -> torch.Tensor:
    """A per-dimension spread from config as a float32 ``(size,)`` tensor (labels are divided by
    it); ValueError naming ``name`` unless it is ``size`` positive numbers."""
    scale = torch.as_tensor(list(values), dtype=torch.float32)
    if scale.shape != (size,) or bool((scale <= 0).any()):
        raise ValueError(f"{name} must be {size} positive numbers, got {list(scale.tolist())}")
    return scale


def cosine_factor(step: int, total: int, floor: float = 0.0, decay_from: float = 0.0) -> float:
    """Learning-rate factor: 1 until ``decay_from * total`` steps, then a cosine down to ``floor``
    at ``total`` (and after). ``decay_from`` 0 decays over the whole run."""
    start = decay_from * total
    progress = min(max(step - start, 0.0), total - start) / max(total - start, 1e-9)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients into ``module`` and keep its batch-norm statistics fixed (eval mode).

    Set before the DDP wrap so DDP never waits for gradients of frozen parameters.
    """
    module.requires_grad_(False)
    module.eval()
    return module


def stage_from_checkpoint(path: str | Path) -> "StageModule":
    """Rebuild the stage LightningModule saved in a Lightning ``.ckpt`` (weights included)."""
    import importlib

    path = Path(path)
    if not path.exists():
        raise PdfgcError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise PdfgcError(f"cannot read checkpoint {path}: {exc.__class__.__name__}") from exc
    name = ckpt.get("pdfgc_stage_class") if isinstance(ckpt, dict) else None
    if not name:
        raise PdfgcError(f"{path} is not a pdfgc stage checkpoint (no pdfgc_stage_class)")
    module_name, _, cls_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    model = cls(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_weights_file(module: nn.Module, path: Path) -> None:
    """Load one exported ``*.pth`` state_dict into ``module`` strictly, with clear errors."""
    state = read_state_dict(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise PdfgcError(f"{path} lacks key {missing[0]!r} ({len(missing)} keys missing)")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise PdfgcError(
                f"{path}: key {key!r} has shape {tuple(state[key].shape)}, "
                f"the network expects {tuple(value.shape)} (wrong networks config?)"
            )
    module.load_state_dict({k: state[k] for k in own})


class StageModule(pl.LightningModule):
    """Base of the stage LightningModules.

    :param networks: the networks config (``configs/networks/*.yaml``), each entry with a
        ``_target_``; a stage builds only the networks it needs via :meth:`build`.
    :param optimizer: Adam settings shared by every network of the stage
        (``lr``, ``betas``, ``weight_decay``).
    """

    #: network slots the stage trains or uses; subclasses set it
    slots: tuple[str, ...] = ()
    stage_name: str = "stage"

    def __init__(self, networks: DictConfig | Mapping, optimizer: Mapping) -> None:
        super().__init__()
        self.networks_cfg = OmegaConf.create(OmegaConf.to_container(networks, resolve=True)
                                             if isinstance(networks, DictConfig) else dict(networks))
        self.optimizer_cfg = dict(optimizer)

    # ---- construction -------------------------------------------------------------------
    def build(self, slot: str, **overrides: Any) -> nn.Module:
        """Instantiate the network of ``slot`` from the networks config."""
        key = "generator" if slot == "generator0" else slot
        if key not in self.networks_cfg:
            raise PdfgcError(f"networks config has no {key!r} entry")
        return instantiate(self.networks_cfg[key], **overrides)

    @property
    def image_size(self) -> int:
        return int(self.networks_cfg.get("image_size", 224))

    def adam(self, groups: Mapping[str, Iterable[torch.nn.Parameter]] | Iterable[torch.nn.Parameter]
             ) -> torch.optim.Optimizer:
        """Adam over trainable parameters; ``groups`` maps network names to parameters so that
        ``optimizer.lr_by_network`` (e.g. ``{generator0: 1e-3}``) can give one network its own rate;
        ``optimizer.fused`` picks Adam's fused kernel (the same update to float rounding)."""
        cfg = self.optimizer_cfg
        lr = float(cfg.get("lr", 1e-4))
        per_network = dict(cfg.get("lr_by_network") or {})
        if not isinstance(groups, Mapping):
            groups = {"all": groups}
        param_groups = []
        for name, params in groups.items():
            trainable = [p for p in params if p.requires_grad]
            if trainable:
                param_groups.append({"params": trainable, "lr": float(per_network.get(name, lr)), "name": name})
        fused = cfg.get("fused")  # None: torch's choice (foreach); True: one fused kernel (CPU, CUDA)
        return torch.optim.Adam(param_groups, lr=lr, betas=tuple(cfg.get("betas", (0.0, 0.99))),
                                weight_decay=float(cfg.get("weight_decay", 0.0)),
                                fused=None if fused is None else bool(fused))

    def scheduled(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer | dict:
        """``configure_optimizers``' return for a stage with automatic optimisation: the optimiser,
        with the learning-rate schedule ``optimizer.schedule`` stepped once per optimiser step:
        ``constant`` (default) or ``cosine`` (each group keeps its ``lr`` for the first
        ``optimizer.decay_from`` share of ``optimizer.schedule_steps``, by default
        ``trainer.max_steps``, then falls along a cosine to ``lr * optimizer.min_lr_ratio``; the
        scheduler's position is saved in checkpoints, so a resumed run continues the same curve)."""
        kind = str(self.optimizer_cfg.get("schedule", "constant"))
        if kind == "constant":
            return optimizer
        if kind != "cosine":
            raise PdfgcError(f"optimizer.schedule must be constant or cosine, got {kind!r}")
        total = self.optimizer_cfg.get("schedule_steps")
        if total is None:
            total = self.trainer.max_steps if self._trainer is not None else -1
        total = int(total)
        if total <= 0:
            raise PdfgcError("optimizer.schedule=cosine needs trainer.max_steps or optimizer.schedule_steps "
                             "(the schedule's length in optimiser steps)")
        floor = float(self.optimizer_cfg.get("min_lr_ratio", 0.0))
        decay_from = float(self.optimizer_cfg.get("decay_from", 0.0))
        if not 0.0 <= decay_from < 1.0:
            raise PdfgcError(f"optimizer.decay_from must be in [0, 1), got {decay_from}")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_factor(step, total, floor, decay_from))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def network_slots(self) -> dict[str, nn.Module]:
        """The networks this stage holds, by export slot (EMA weights for the generators)."""
        out: dict[str, nn.Module] = {}
        for slot in self.slots:
            ema = getattr(self, f"{slot}_ema", None)
            out[slot] = ema.module if ema is not None else getattr(self, slot)
        return out

    def train(self, mode: bool = True):
        """Lightning switches the whole module to train mode at fit start, after validation and
        on resume; frozen parts are put back to eval here each time (not in an epoch hook, which
        a mid-epoch resume skips)."""
        super().train(mode)
        if mode:
            self.keep_frozen_in_eval()
        return self

    def keep_frozen_in_eval(self) -> None:
        """Put frozen sub-networks (and frozen batch norms) in eval mode; stages override."""

    def all_gather_flat(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of every rank, ``(world*B, D)``, so that all ranks keep identical memory banks."""
        if self._trainer is None or self.trainer.world_size == 1:
            return x
        return self.all_gather(x).flatten(0, 1)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Tell a resumable loader that one more batch reached the step (Lightning prefetches
        # ahead, so the loader itself cannot know what a checkpoint has really consumed).
        loader = self.trainer.train_dataloader if self._trainer is not None else None
        if hasattr(loader, "mark_consumed"):
            loader.mark_consumed()

    # ---- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets evaluate.py / export tools rebuild the right stage from a bare .ckpt.
        checkpoint["pdfgc_stage_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    # ---- init from a previous stage --------------------------------------------------------
    def init_from_export(self, directory: str | Path) -> list[str]:
        """Load weights for every slot whose file exists in ``directory``; returns loaded slots.

        A stage may also adapt a file meant for another shape (the stage-3 generator starts
        from G0): subclasses override :meth:`init_slot_from_file`.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise PdfgcError(f"init_from directory not found: {directory}")
        loaded = []
        for slot in self.slots:
            if self.init_slot_from_file(slot, directory):
                loaded.append(slot)
        if not loaded:
            raise PdfgcError(f"init_from {directory}: none of {sorted(EXPORT_FILES.values())} found")
        log.info("initialised %s from %s", ", ".join(loaded), directory)
        return loaded

    def init_slot_from_file(self, slot: str, directory: Path) -> bool:
        path = directory / EXPORT_FILES[slot]
        if not path.exists():
            return False
        load_weights_file(getattr(self, slot), path)
        ema = getattr(self, f"{slot}_ema", None)
        if ema is not None:
            ema.module.load_state_dict(getattr(self, slot).state_dict())
        self.init_source = str(directory)
        return True

    # ---- export --------------------------------------------------------------------------
    def export(self, directory: str | Path, carry_from: str | Path | None = None) -> Path:
        """Write this stage's weights in the official layout, plus sidecars.

        Files of networks this stage does not hold are copied from ``carry_from`` (the export
        it was initialised from), so every export is complete for the stages after it.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for slot, net in self.network_slots().items():
            state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            with atomic_path(directory / EXPORT_FILES[slot]) as tmp:
                torch.save(state, tmp)
        if carry_from is not None and Path(carry_from).is_dir():
            for name in EXPORT_FILES.values():
                src, dst = Path(carry_from) / name, directory / name
                if src.exists() and not dst.exists():
                    with atomic_path(dst) as tmp:
                        shutil.copyfile(src, tmp)
        atomic_write_text(directory / NETWORKS_SIDECAR, OmegaConf.to_yaml(self.networks_cfg))
        stage_info = {"stage": self.stage_name, "global_step": int(self.global_step),
                      "slots": list(self.network_slots())}
        atomic_write_text(directory / STAGE_SIDECAR, OmegaConf.to_yaml(OmegaConf.create(stage_info)))
        return directory
