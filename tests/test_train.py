"""Training stages end to end on a tiny SynthTalk world (CPU)."""

from __future__ import annotations

import collections
import copy
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from callbacks.memory_format import ChannelsLast, to_channels_last
from pdfgc.errors import PdfgcError
from pdfgc.losses.leakage import linear_leakage
from pdfgc.stages.base import EXPORT_FILES, cosine_factor, positive_scale
from pdfgc.stages.landmarks import LandmarkStage, known_mse, map_shares
from pdfgc.training import resolve_ckpt_path, run, train_stage

from conftest import CONFIG_DIR, REPO_ROOT, compose_train

EXPERIMENTS = sorted(str(p.relative_to(CONFIG_DIR / "experiment").with_suffix(""))
                     for p in (CONFIG_DIR / "experiment").rglob("*.yaml"))


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthtalk_cache")


def tiny(cache: Path, callbacks: str = "~callbacks") -> list[str]:
    """A 6-clip world (4 train, 2 held-out speakers), 1 s clips, batch 2; no callbacks by default."""
    return ["data.num_speakers=4", "data.heldout_speakers=2", "data.clips_per_speaker=1",
            "data.clip_seconds=1.0", f"data.cache_dir={cache}", "data.batch_size=2", "data.val_samples=2",
            "data.render_workers=1", callbacks, "extras.print_config=false", "trainer.log_every_n_steps=1"]


def build(cfg):
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, networks=OmegaConf.to_container(cfg.networks, resolve=True),
                        _recursive_=False, _convert_="all")
    return datamodule, model


class Recorder(pl.Callback):
    """Keeps the logged value of ``key`` after every training batch."""

    def __init__(self, key: str) -> None:
        self.key, self.values = key, []

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.key in trainer.callback_metrics:
            self.values.append(float(trainer.callback_metrics[self.key]))


def fit(cfg, model, datamodule, max_steps: int, callbacks=(), **kwargs) -> pl.Trainer:
    # No checkpoints: with logger=False Lightning would write them into the working directory.
    kwargs.setdefault("enable_checkpointing", False)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=list(callbacks), **kwargs)
    trainer.fit(model, datamodule=datamodule)
    return trainer


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.startswith("synthtalk/")])
def test_every_experiment_runs_one_fast_dev_run_step(experiment, tmp_path, world_cache):
    cfg = compose_train([f"experiment={experiment}", *tiny(world_cache), "+trainer.fast_dev_run=true"], tmp_path)
    result = run(cfg, overrides=[*tiny(world_cache), "+trainer.fast_dev_run=true"])
    if cfg.get("stages"):
        assert list(result["stages"]) == list(cfg.stages)
        for stage in result["stages"].values():
            assert stage["metrics"], "each chained stage logged metrics"
    else:
        assert any(k.startswith("train/") for k in result["metrics"])
        assert all(torch.isfinite(torch.tensor(v)) for v in result["metrics"].values())


@pytest.mark.parametrize("experiment,key,steps", [
    ("synthtalk/stage0_landmarks", "train/loss", 40),
    ("synthtalk/stage1", "train/l1", 60),
    ("synthtalk/stage2", "train/total", 30),
    ("synthtalk/stage3", "train/l1", 60),
])
def test_each_stage_loss_goes_down_on_an_overfit_batch(experiment, key, steps, tmp_path, world_cache):
    cfg = compose_train([f"experiment={experiment}", *tiny(world_cache)], tmp_path)
    pl.seed_everything(0)
    datamodule, model = build(cfg)
    rec = Recorder(key)
    fit(cfg, model, datamodule, steps, [rec], overfit_batches=1)
    first, last = sum(rec.values[:3]) / 3, sum(rec.values[-3:]) / 3
    assert last < 0.8 * first, f"{key}: {first:.4f} -> {last:.4f}"


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module, prefix: str = "") -> list[str]:
    return [k for k, v in module.state_dict().items()
            if k.startswith(prefix) and v.dtype.is_floating_point and not torch.equal(before[k], v)]


@pytest.mark.parametrize("coordinate_weight", [1.0, 0.0])
def test_landmark_stage_trains_the_fan_and_never_the_heads(coordinate_weight, tmp_path, world_cache):
    cfg = compose_train(["experiment=synthtalk/stage0_landmarks", *tiny(world_cache),
                         f"model.coordinate_weight={coordinate_weight}", "model.emotion_weight=0",
                         f"model.pose_weight={coordinate_weight}", f"model.eye_weight={coordinate_weight}",
                         f"model.expression_weight={coordinate_weight}"], tmp_path)
    datamodule, model = build(cfg)
    motion = snapshot(model.motion)
    fit(cfg, model, datamodule, 3)
    for part in ("model.conv1.", "model.m0.", "model.l0."):
        assert changed(motion, model.motion, part), f"{part} trains"
    heads = [k for k in changed(motion, model.motion) if not k.startswith("model.")]
    assert heads == [], f"heads changed: {heads[:3]}"
    bottleneck = [k for k in changed(motion, model.motion) if k.startswith(("model.conv6.", "model.fc."))]
    # the bottleneck learns only through the read-outs (coordinates, pose, eye state)
    assert bool(bottleneck) == bool(coordinate_weight), bottleneck[:3]


@pytest.mark.parametrize("experiment,key,overrides", [
    ("synthtalk/stage0_landmarks", "train/emotion", ["model.emotion_weight=1.0"]),
    ("synthtalk/stage3", "train/emotion_class", ["model.loss_weights.emotion_class=1.0"]),
    ("synthtalk/stage0_landmarks", "train/pose", ["model.pose_weight=1.0", "model.emotion_weight=0"]),
    ("synthtalk/stage0_landmarks", "train/eyes", ["model.eye_weight=1.0", "model.emotion_weight=0"]),
    ("synthtalk/stage0_landmarks", "train/expression", ["model.expression_weight=1.0", "model.emotion_weight=0"]),
])
def test_label_heads_train_and_are_not_exported(experiment, key, overrides, tmp_path, world_cache):
    """Where samples carry labels (emotion class, pose, eye state), the stage's loss on them goes
    down on an overfit batch; the classifier / read-out is a training head and stays out of the
    export, which holds only the network's own keys."""
    cfg = compose_train([f"experiment={experiment}", *tiny(world_cache), *overrides], tmp_path)
    pl.seed_everything(0)
    datamodule, model = build(cfg)
    rec = Recorder(key)
    fit(cfg, model, datamodule, 40, [rec], overfit_batches=1)
    assert len(rec.values) >= 20
    first, last = sum(rec.values[:3]) / 3, sum(rec.values[-3:]) / 3
    assert last < 0.7 * first, f"{key}: {first:.4f} -> {last:.4f}"
    export = model.export(tmp_path / "export")
    slots = {"motion_model.pth": model.motion}
    for weights in export.glob("*.pth"):
        keys = set(torch.load(weights, weights_only=True))
        assert not any("classifier" in k or "readout" in k for k in keys), weights.name
        if weights.name in slots:
            assert keys <= set(slots[weights.name].state_dict()), weights.name


def test_label_scales_from_config_must_be_positive_and_complete():
    assert torch.equal(positive_scale([0.3, 0.15, 0.1, 0.03, 0.03, 0.06], "pose_scale"),
                       torch.tensor([0.3, 0.15, 0.1, 0.03, 0.03, 0.06]))
    for bad in ([0.1] * 5, [0.1, 0.1, 0.0, 0.1, 0.1, 0.1]):
        with pytest.raises(ValueError, match="eye_scale must be 6 positive numbers"):
            positive_scale(bad, "eye_scale")


def test_known_mse_skips_unknown_labels_and_keeps_a_graph():
    prediction = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, float("nan")], [1.0, 4.0]])
    assert float(known_mse(prediction, target)) == pytest.approx((1 + 4 + 0) / 3)
    nothing = known_mse(prediction, torch.full((2, 2), float("nan")))
    nothing.backward()  # no label known: 0, and every input still gets a (zero) gradient
    assert float(nothing) == 0.0 and torch.equal(prediction.grad, torch.zeros(2, 2))


def test_stage0_emotion_map_gradient_scales_what_the_class_sends_into_the_maps(tmp_path, world_cache):
    """emotion_map_gradient=s: the emotion term's value is unchanged and its gradient in the
    heatmap layers is s times the full one (0: none, the bottleneck only); with
    emotion_map_ranges only those maps' layer rows get it."""
    def emotion_gradient(name: str, *overrides: str) -> tuple[float, torch.Tensor]:
        cfg = compose_train(["experiment=synthtalk/stage0_landmarks", *tiny(world_cache), "model.emotion_weight=1.0",
                             *overrides], tmp_path / name)
        pl.seed_everything(0)
        datamodule, model = build(cfg)
        datamodule.setup("fit")
        terms = model.step(next(iter(datamodule.train_dataloader())))
        terms["emotion"].backward()
        assert model.motion.model.fc.weight.grad.abs().sum() > 0  # the bottleneck always learns the class
        grad = model.motion.model.l0.weight.grad
        return float(terms["emotion"]), torch.zeros_like(model.motion.model.l0.weight) if grad is None else grad

    values, grads = {}, {}
    for share in (0.0, 0.25, 1.0):
        values[share], grads[share] = emotion_gradient(str(share), f"model.emotion_map_gradient={share}")
    assert values[0.0] == values[0.25] == values[1.0]
    assert float(grads[0.0].abs().sum()) == 0.0 and float(grads[1.0].abs().sum()) > 0
    assert torch.allclose(grads[0.25], 0.25 * grads[1.0], rtol=1e-4, atol=1e-9)
    _, ranged = emotion_gradient("ranged", "model.emotion_map_gradient=0.25", "model.emotion_map_ranges=[[17,36]]")
    rows = ranged.flatten(1)
    assert torch.allclose(rows[17:36], 0.25 * grads[1.0].flatten(1)[17:36], rtol=1e-4, atol=1e-9)
    assert float(rows[:17].abs().sum()) == 0.0 and float(rows[36:].abs().sum()) == 0.0
    with pytest.raises(ValueError, match=r"emotion_map_ranges: each entry is \[first, end\)"):
        map_shares(70, 0.1, [[30, 80]])
    assert map_shares(70, 0.0, [[17, 36]]) == 0.0  # no share: a plain detach, no backward through the maps
    cfg = compose_train(["experiment=synthtalk/stage0_landmarks", *tiny(world_cache)], tmp_path / "bad")
    with pytest.raises(ValueError, match="emotion_map_gradient must be in"):
        LandmarkStage(OmegaConf.to_container(cfg.networks, resolve=True), dict(cfg.model.optimizer),
                      emotion_map_gradient=2.0)


def test_stage0_unlabelled_batches_still_reach_every_readout(tmp_path, world_cache):
    """A batch with no pose, eye or emotion label (a corpus without them, on one DDP rank) gives
    zero read-out losses that still reach every read-out, so DDP never waits for a gradient."""
    cfg = compose_train(["experiment=synthtalk/stage0_landmarks", *tiny(world_cache)], tmp_path)
    datamodule, model = build(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    batch["pose"][:], batch["eyes"][:], batch["emotion"][:] = float("nan"), float("nan"), -1
    terms = model.step(batch)
    assert float(terms["pose"]) == float(terms["eyes"]) == float(terms["emotion"]) == 0.0
    terms["loss"].backward()
    for head in (model.readouts["pose"], model.readouts["eyes"], model.emotion_classifier[1]):
        assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) == 0.0


def test_stage0_heads_whose_loss_is_off_are_frozen_so_ddp_waits_for_no_gradient(tmp_path, world_cache):
    """With every optional stage-0 loss off (the model config's defaults), one step's backward
    reaches every trainable parameter: otherwise DDP with find_unused_parameters off fails at the
    next step."""
    off = ["model.emotion_weight=0", "model.pose_weight=0", "model.eye_weight=0", "model.expression_weight=0"]
    for overrides in (off, [*off, "model.coordinate_weight=0"], ["model.expression_weight=1.0"]):
        cfg = compose_train(["experiment=synthtalk/stage0_landmarks", *tiny(world_cache), *overrides], tmp_path)
        datamodule, model = build(cfg)
        datamodule.setup("fit")
        model.step(next(iter(datamodule.train_dataloader())))["loss"].backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == [], (overrides, missing[:3])
        assert model.expression.weight.requires_grad == ("model.expression_weight=1.0" in overrides)
        assert model.coordinates.weight.requires_grad == ("model.coordinate_weight=0" not in overrides)


def test_stage2_eye_gaze_regresses_only_the_gaze_dims_and_skips_unknown_irises(tmp_path, world_cache):
    """eye_gaze is the L1 of the positive's eye-code dims 2-3 to the irises' mean offset over
    gaze_scale; its gradient reaches only those two outputs, and NaN offsets are left out."""
    cfg = compose_train(["experiment=synthtalk/stage2", *tiny(world_cache), "model.loss_weights.eye_gaze=1.0"], tmp_path)
    pl.seed_everything(0)
    datamodule, model = build(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    terms, _ = model.losses(batch)
    gaze = model.codes(batch["eye_positive"])["eye"][:, 2:4]
    expected = (gaze - batch["eye_gaze"] / model.gaze_scale).abs().mean()
    assert torch.allclose(terms["eye_gaze"], expected, rtol=1e-4), (terms["eye_gaze"], expected)
    terms["eye_gaze"].backward()
    grad = model.motion.eye_embed[1].weight.grad.abs().sum(1)
    assert bool((grad[[2, 3]] > 0).all()) and float(grad[[0, 1, 4, 5]].sum()) == 0.0, grad
    batch["eye_gaze"][0] = float("nan")  # the first positive's irises unknown
    unknown, _ = model.losses(batch)
    gaze = model.codes(batch["eye_positive"])["eye"][1:, 2:4]
    expected = (gaze - batch["eye_gaze"][1:] / model.gaze_scale).abs().mean()
    assert torch.allclose(unknown["eye_gaze"], expected, rtol=1e-4)


def test_stage2_lip_adversary_reads_the_emotion_class_where_clips_are_labelled(tmp_path, world_cache):
    """lip_leakage_emotions=C adds the one-hot of each clip's class to the lip code's off-factors,
    one row per time step; unlabelled clips (-1) get zeros; 0 leaves the paper's 12 columns."""
    overrides = [*tiny(world_cache), "model.lip_leakage_emotions=8"]
    datamodule, model = build(compose_train(["experiment=synthtalk/stage2", *overrides], tmp_path))
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    steps = batch["frames"].shape[1]
    batch["emotion"] = torch.tensor([3, -1])
    _, rows = model.losses(batch)
    lip, off_factors = rows["lip"]
    assert off_factors.shape == (2 * steps, 20) and lip.shape[0] == 2 * steps
    assert "lip_clip" not in rows and model.lip_clip_leakage is None, "the clip-mean adversary is off by default"
    emotion = off_factors[:, 12:]
    assert torch.equal(emotion[:steps], torch.eye(8)[3].expand(steps, -1)) and not emotion[steps:].any()
    _, plain = build(compose_train(["experiment=synthtalk/stage2", *tiny(world_cache),
                                    "model.lip_leakage_emotions=0"], tmp_path / "plain"))
    assert plain.losses(batch)[1]["lip"][1].shape == (2 * steps, 12)


def test_stage2_clip_mean_adversary_reads_each_clips_mean_lip_code(tmp_path, world_cache):
    """loss_weights.lip_clip_leakage: its adversary sees one row per clip, the lip code averaged
    over the clip's N steps against the clip's one-hot class; its loss is linear_leakage of those
    rows with its banks, its gradient reaches the lip head, and training pushes rows into its banks."""
    overrides = [*tiny(world_cache), "model.lip_leakage_emotions=8", "model.loss_weights.lip_clip_leakage=1.0"]
    cfg = compose_train(["experiment=synthtalk/stage2", *overrides], tmp_path)
    pl.seed_everything(0)
    datamodule, model = build(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    b, n = batch["frames"].shape[:2]
    batch["emotion"] = torch.tensor([3, 5])
    lip = model.codes(batch["frames"].flatten(0, 1))["lip"].detach()
    clip_mean = lip.view(b, n, -1).mean(1)
    _, rows = model.losses(batch)
    code, emotion = rows["lip_clip"]
    assert torch.allclose(code, clip_mean, atol=1e-6) and torch.equal(emotion, torch.eye(8)[[3, 5]])
    # Banks filled past min_rows with known rows: the loss equals the closed-form leakage.
    bank_codes, bank_emotions = torch.randn(70, clip_mean.shape[1]), torch.eye(8)[torch.arange(70) % 8]
    model.lip_clip_leakage.push(bank_codes, bank_emotions)
    terms, _ = model.losses(batch)
    expected = linear_leakage(clip_mean, emotion, bank_codes, bank_emotions, ridge=model.lip_clip_leakage.ridge)
    assert float(terms["lip_clip_leakage"]) > 0
    assert torch.allclose(terms["lip_clip_leakage"], expected, rtol=1e-4), (terms["lip_clip_leakage"], expected)
    terms["lip_clip_leakage"].backward()
    assert model.motion.mouth_embed[1].weight.grad.abs().sum() > 0
    fresh_datamodule, fresh = build(cfg)
    fit(cfg, fresh, fresh_datamodule, 3)
    assert len(fresh.lip_clip_leakage.code_bank) == 3 * cfg.data.batch_size  # one row per clip per step
    assert len(fresh.lip_leakage.code_bank) == 3 * cfg.data.batch_size * n
    with pytest.raises(Exception, match="lip_leakage_emotions"):
        build(compose_train(["experiment=synthtalk/stage2", *tiny(world_cache), "model.lip_leakage_emotions=0",
                             "model.loss_weights.lip_clip_leakage=1.0"], tmp_path / "bad"))


def test_stage2_lip_audio_match_regresses_the_visual_lip_code_onto_the_detached_audio_code(tmp_path, world_cache):
    """loss_weights.lip_audio_match: MSE(visual lip code, audio lip code) over the audio codes'
    mean per-dim variance; its gradient moves the lip head, never E_aud; 0 (default) adds no term."""
    cfg = compose_train(["experiment=synthtalk/stage2", *tiny(world_cache), "model.loss_weights.lip_audio_match=1.0"],
                        tmp_path)
    pl.seed_everything(0)
    datamodule, model = build(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    terms, _ = model.losses(batch)
    visual = model.codes(batch["frames"].flatten(0, 1))["lip"]
    _, audio = model.audio(batch["mels"].flatten(0, 1))
    expected = (visual - audio).pow(2).mean() / audio.var(0, unbiased=False).mean()
    assert torch.allclose(terms["lip_audio_match"], expected, rtol=1e-4), (terms["lip_audio_match"], expected)
    model.zero_grad()
    terms["lip_audio_match"].backward()
    assert model.motion.mouth_embed[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.audio.parameters()), "the audio code is the target"
    # The SynthTalk experiment weights it 0.3; weight 0 must drop the term entirely.
    _, plain = build(compose_train(["experiment=synthtalk/stage2", *tiny(world_cache),
                                    "model.loss_weights.lip_audio_match=0"], tmp_path / "plain"))
    assert "lip_audio_match" not in plain.losses(batch)[0]


def test_stage2_audio_fold_makes_the_lip_code_its_rank_k_prediction_of_the_audio_code(tmp_path, world_cache):
    """lip_code_fold=audio: after training, the lip head outputs the rank-k ridge prediction of
    the banked audio codes (keys and shapes kept); an audio code that is a rank-2 linear map of
    the visual code plus noise the visual code cannot know is recovered without the noise."""
    cfg = compose_train(["experiment=synthtalk/stage2", *tiny(world_cache), "model.lip_code_rank=2",
                         "model.lip_code_fold=audio", "model.lip_fold_ridge=1e-6"], tmp_path)
    pl.seed_everything(0)
    _, model = build(cfg)
    features = torch.randn(1500, model.motion.mouth_embed[1].in_features)
    visual = model.motion.mouth_code(features).double()
    dim = visual.shape[1]
    mixing = torch.randn(dim, 2, dtype=torch.float64) @ torch.randn(2, dim, dtype=torch.float64) / dim ** 0.5
    speech = 3.0 + (visual - visual.mean(0)) @ mixing
    audio = speech + speech.std(0) * torch.randn_like(speech)  # as much again that the frame does not show
    model.push_lip_fold_pair(visual[:4].float(), audio[:4].float())
    model.on_train_end()  # too few pairs for a fit: left as trained
    assert torch.equal(model.motion.mouth_code(features).double(), visual)
    model.push_lip_fold_pair(visual[4:].float(), audio[4:].float())
    keys = {k: v.shape for k, v in model.motion.state_dict().items()}
    model.on_train_end()
    after = model.motion.mouth_code(features).double()
    assert {k: v.shape for k, v in model.motion.state_dict().items()} == keys
    assert float((after - speech).pow(2).mean() / speech.var(0).mean()) < 0.05, "recovers the speech part"
    assert float((audio - speech).pow(2).mean() / speech.var(0).mean()) > 0.8, "which the raw audio is not"
    singular = torch.linalg.svdvals(after - after.mean(0))
    assert float(singular[2]) < 1e-3 * float(singular[0]), "rank 2"
    fresh_datamodule, fresh = build(cfg)
    fit(cfg, fresh, fresh_datamodule, 3)  # training banks one (visual, audio) pair per frame
    frames = 3 * cfg.data.batch_size * cfg.data.num_lip_steps
    assert len(fresh.lip_fold_banks["visual"]) == len(fresh.lip_fold_banks["audio"]) == frames
    with pytest.raises(Exception, match="lip_code_fold must be"):
        build(compose_train(["experiment=synthtalk/stage2", *tiny(world_cache), "model.lip_code_fold=svd"],
                            tmp_path / "bad"))


def test_stage1_can_keep_a_given_e_mot_fixed(tmp_path, world_cache):
    """train_motion=false (SynthTalk, after the landmark stage): E_mot, BN statistics included,
    is exactly as given while E_app and G0 train."""
    cfg = compose_train(["experiment=synthtalk/stage1", *tiny(world_cache), "model.train_motion=false"], tmp_path)
    datamodule, model = build(cfg)
    motion, appearance = snapshot(model.motion), snapshot(model.appearance)
    fit(cfg, model, datamodule, 4)
    assert changed(motion, model.motion) == []
    assert changed(appearance, model.appearance) and not any(p.requires_grad for p in model.motion.parameters())


def test_stage1_initialises_e_mot_from_the_landmark_export(tmp_path, world_cache):
    s0 = compose_train(["experiment=synthtalk/stage0_landmarks", *tiny(world_cache), "trainer.max_steps=2",
                        "trainer.val_check_interval=100"], tmp_path / "s0")
    export0 = Path(train_stage(s0)["export_dir"])
    assert (export0 / "motion_model.pth").exists() and not (export0 / "appearance_model.pth").exists()
    s1 = compose_train(["experiment=synthtalk/stage1", *tiny(world_cache)], tmp_path / "s1")
    _, stage1 = build(s1)
    assert stage1.init_from_export(export0) == ["motion"]
    saved = torch.load(export0 / "motion_model.pth", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in stage1.motion.state_dict().items())


def test_stage2_trains_heads_and_audio_but_not_the_motion_backbone(tmp_path, world_cache):
    cfg = compose_train(["experiment=synthtalk/stage2", *tiny(world_cache)], tmp_path)
    datamodule, model = build(cfg)
    motion, audio = snapshot(model.motion), snapshot(model.audio)
    fit(cfg, model, datamodule, 3)
    assert changed(motion, model.motion, "model.") == [], "the FAN backbone (incl. BN stats) is frozen"
    for head in ("to_mouth", "to_headpose", "to_eye"):
        assert changed(motion, model.motion, head), f"{head} trains"
    assert changed(motion, model.motion, "to_emo") == [], "the emotion head waits for stage 3"
    assert changed(audio, model.audio), "E_aud trains"


def test_stage3_freezes_appearance_audio_and_motion_except_emotion(tmp_path, world_cache):
    cfg = compose_train(["experiment=synthtalk/stage3", *tiny(world_cache)], tmp_path)
    datamodule, model = build(cfg)
    before = {name: snapshot(getattr(model, name)) for name in ("appearance", "audio", "motion", "generator")}
    fit(cfg, model, datamodule, 4)
    assert changed(before["appearance"], model.appearance) == []
    assert changed(before["audio"], model.audio) == []
    frozen_motion = [k for k in changed(before["motion"], model.motion) if not k.startswith(("to_emo", "emo_embed"))]
    assert frozen_motion == [], f"frozen motion parts changed: {frozen_motion[:3]}"
    assert changed(before["motion"], model.motion, "to_emo"), "the emotion head trains"
    assert changed(before["generator"], model.generator), "G trains"


@pytest.mark.parametrize("experiment,callbacks", [
    ("synthtalk/stage2", "model_checkpoint"),
    ("synthtalk/stage2", "[model_checkpoint,channels_last]"),
    ("synthtalk/stage0_landmarks", "model_checkpoint"),  # with its cosine learning-rate schedule
])
def test_resume_from_last_checkpoint_continues_exactly(experiment, callbacks, tmp_path, world_cache):
    """Interrupted at step 2 and resumed to 4 == trained to 4 in one go (weights, optimiser and
    learning-rate schedule), in either memory layout."""
    common = [f"experiment={experiment}", *tiny(world_cache, callbacks=f"callbacks={callbacks}"),
              "++model.optimizer.schedule_steps=4",  # the same curve in the run cut short at 2
              "trainer.max_steps=4", "export=false", "callbacks.model_checkpoint.every_n_train_steps=1",
              "trainer.val_check_interval=100"]
    straight = compose_train(common, tmp_path / "straight")
    train_stage(straight)
    ref = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")

    interrupted = compose_train([*common, "trainer.max_steps=2"], tmp_path / "resumed")
    train_stage(interrupted)
    resumed = compose_train([*common, "ckpt_path=last"], tmp_path / "resumed")
    train_stage(resumed)
    out = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert out["global_step"] == ref["global_step"] == 4
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, out["state_dict"][key]), f"{key} differs after resume"


@pytest.mark.parametrize("experiment", ["synthtalk/stage0_landmarks", "synthtalk/stage1", "synthtalk/stage2",
                                        "synthtalk/stage3"])
def test_channels_last_and_fused_adam_train_the_same_as_the_plain_layout(experiment, tmp_path, world_cache):
    """NHWC and Adam's fused kernel change the speed, not the model: the same logged losses over
    four optimiser steps as NCHW with torch's default Adam, and an export that loads anywhere."""
    losses = {}
    for variant, fused in (("plain", "null"), ("fast", "true")):
        cfg = compose_train([f"experiment={experiment}", *tiny(world_cache), f"model.optimizer.fused={fused}"],
                            tmp_path / variant)
        pl.seed_everything(0)
        datamodule, model = build(cfg)
        rec = Recorder("train/loss")
        trainer = fit(cfg, model, datamodule, 4, [rec, *([ChannelsLast()] if variant == "fast" else [])],
                      overfit_batches=1)
        assert all(bool(opt.defaults["fused"]) == (fused == "true") for opt in trainer.optimizers)
        losses[variant] = rec.values
    assert len(losses["plain"]) >= 2  # GAN stages take two optimiser steps (D, G) per batch
    # The first loss comes before any update of the networks it scores (GAN stages: after D's
    # first step): the same to float rounding. Adam's first steps move every weight by ~lr
    # whatever its gradient's size, so a near-zero gradient whose sign rounding flips moves its
    # weight the other way: later losses agree less closely.
    assert losses["fast"][0] == pytest.approx(losses["plain"][0], rel=1e-4)
    assert losses["fast"] == pytest.approx(losses["plain"], rel=2e-3)

    # (a 1x1 kernel or a single input channel is laid out the same either way)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)
             and m.kernel_size != (1, 1) and m.in_channels > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    export = model.export(tmp_path / "export")
    for slot, net in model.network_slots().items():
        saved = torch.load(export / EXPORT_FILES[slot], weights_only=True, map_location="cpu")
        assert all(t.is_contiguous() for t in saved.values()), f"{slot}: export not contiguous"
        fresh = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
        for tensor in fresh.state_dict().values():
            tensor.zero_()
        fresh.load_state_dict(saved)  # strict, into the plain layout
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in net.state_dict().items())


def test_cosine_factor_falls_from_one_to_its_floor():
    assert cosine_factor(0, 10, 0.01) == 1.0
    assert cosine_factor(5, 10, 0.01) == pytest.approx(0.505)
    assert cosine_factor(10, 10, 0.01) == pytest.approx(0.01)
    assert cosine_factor(25, 10, 0.01) == pytest.approx(0.01)  # stays at the floor after the end
    assert cosine_factor(3, 10) < cosine_factor(2, 10)
    assert [cosine_factor(s, 10, 0.0, decay_from=0.6) for s in (0, 6, 8, 10)] == pytest.approx([1, 1, 0.5, 0])


def test_stage0_learning_rate_follows_its_cosine_schedule(tmp_path, world_cache):
    cfg = compose_train(["experiment=synthtalk/stage0_landmarks", *tiny(world_cache),
                         "model.optimizer.decay_from=0.5"], tmp_path)
    assert cfg.model.optimizer.schedule == "cosine"
    datamodule, model = build(cfg)
    rates = []

    class Rates(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    fit(cfg, model, datamodule, 4, [Rates()])
    opt = cfg.model.optimizer
    lr, floor = opt.lr, opt.min_lr_ratio
    assert rates == pytest.approx([lr * cosine_factor(step, 4, floor, opt.decay_from) for step in range(4)])
    assert rates[-1] < rates[0]
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr * floor)  # after step 4


def test_a_constant_schedule_adds_no_scheduler_and_an_unknown_one_is_refused(tmp_path, world_cache):
    cfg = compose_train(["experiment=synthtalk/stage2", *tiny(world_cache)], tmp_path)
    _, model = build(cfg)
    assert isinstance(model.configure_optimizers(), torch.optim.Adam)
    cfg = compose_train(["experiment=synthtalk/stage2", *tiny(world_cache), "model.optimizer.schedule=linear"],
                        tmp_path)
    _, model = build(cfg)
    with pytest.raises(PdfgcError, match="constant or cosine"):
        model.configure_optimizers()


def test_to_channels_last_converts_only_float_image_batches():
    batch = {"image": torch.rand(2, 3, 8, 8), "labels": torch.zeros(2, 1, 4, 4, dtype=torch.long),
             "frames": torch.rand(2, 5, 3, 8, 8), "nested": [torch.rand(1, 2, 3, 3)], "name": "x"}
    out = to_channels_last(batch)
    assert out["image"].is_contiguous(memory_format=torch.channels_last) and not out["image"].is_contiguous()
    assert torch.equal(out["image"], batch["image"])
    assert out["labels"].is_contiguous() and out["frames"] is batch["frames"] and out["name"] == "x"
    assert isinstance(out["nested"], list) and out["nested"][0].is_contiguous(memory_format=torch.channels_last)
    Pair = collections.namedtuple("Pair", "image label")
    pair = to_channels_last(Pair(torch.rand(1, 2, 3, 3), 7))
    assert isinstance(pair, Pair) and pair.label == 7 and not pair.image.is_contiguous()


def test_ckpt_path_last_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(PdfgcError, match="hydra.run.dir"):
        resolve_ckpt_path("last", tmp_path)
    with pytest.raises(PdfgcError, match="not found"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)


def test_stage_chain_initialises_from_the_previous_export(tmp_path, world_cache, caplog):
    s1 = compose_train(["experiment=synthtalk/stage1", *tiny(world_cache), "trainer.max_steps=2",
                        "trainer.val_check_interval=100"], tmp_path / "s1")
    export1 = Path(train_stage(s1)["export_dir"])
    assert {"appearance_model.pth", "motion_model.pth", "generator0_model.pth", "networks.yaml"} <= \
        {p.name for p in export1.iterdir()}

    s2 = compose_train(["experiment=synthtalk/stage2", *tiny(world_cache), f"init_from={export1}"], tmp_path / "s2")
    _, stage2 = build(s2)
    stage2.init_from_export(export1)
    saved = torch.load(export1 / "motion_model.pth", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in stage2.motion.state_dict().items())

    s3 = compose_train(["experiment=synthtalk/stage3", *tiny(world_cache), "trainer.max_steps=2",
                        "trainer.val_check_interval=100", f"init_from={export1}"], tmp_path / "s3")
    _, stage3 = build(s3)
    loaded = stage3.init_from_export(export1)
    assert "generator" in loaded
    g0 = torch.load(export1 / "generator0_model.pth", weights_only=True)
    g = stage3.generator.state_dict()
    assert torch.equal(g["convs.0.conv.weight"], g0["convs.0.conv.weight"]), "conv weights carried over from G0"
    key = "conv1.conv.modulation.weight"
    # EqualLinear scales by 1/sqrt(in_dim) at run time: the identity response is G0's, not the raw numbers.
    assert torch.allclose(g[key][:, :2048] / 2590 ** 0.5, g0[key][:, :2048] / 2560 ** 0.5, atol=1e-6)
    assert not g[key][:, 2048:].any(), "motion columns start at zero until the fold"

    # A run initialised from G0 folds the codes -> f_mot map into G at fit start.
    with caplog.at_level(logging.INFO, logger="pdfgc.stages.emotion"):
        train_stage(s3)
    assert any("G starts as G0" in r.getMessage() for r in caplog.records)


def test_stage3_code_gain_is_folded_into_the_exported_generator(tmp_path, world_cache):
    """With standardise_codes, G reads codes * gain in training; the export reads raw codes and
    renders the same images, and a checkpoint keeps the gain."""
    from pdfgc.networks.codes import MOTION_DIM, compose_style

    cfg = compose_train(["experiment=synthtalk/stage3", *tiny(world_cache), "model.standardise_codes=true"], tmp_path)
    torch.manual_seed(0)
    _, model = build(cfg)
    model.eval()
    model.code_gain.copy_(torch.rand(MOTION_DIM) * 20 + 0.5)
    codes = {"mouth": torch.randn(2, 500), "emotion": torch.randn(2, 30) * 0.05, "eye": torch.randn(2, 6),
             "pose": torch.randn(2, 6) * 0.1}
    source = torch.rand(2, 3, 64, 64) * 2 - 1
    exported = model.network_slots()["generator"]
    with torch.no_grad():
        trained = model.render(source, codes, generator=model.generator_ema.module)
        id_vec, id_map = model.appearance(source)
        raw = exported(compose_style(id_vec, codes["mouth"], codes["emotion"], codes["eye"], codes["pose"]), id_map)
        plain = model.generator_ema.module(
            compose_style(id_vec, codes["mouth"], codes["emotion"], codes["eye"], codes["pose"]), id_map)
    assert torch.allclose(trained, raw, atol=1e-4)
    assert not torch.allclose(trained, plain, atol=1e-2), "the gain changes what G renders"
    assert "code_gain" in model.state_dict()


def test_g0_folded_into_g_renders_as_g0_from_the_mapped_codes():
    """G from G0 + the fold of an exact affine map codes -> f_mot gives G0's image for G0's input."""
    from pdfgc.networks import Generator
    from pdfgc.networks.codes import MOTION_DIM
    from pdfgc.stages.generator_init import fold_codes_into_generator, generator_from_g0, ridge_code_map

    torch.manual_seed(0)
    small = dict(size=16, init_size=4, channels={4: 32, 8: 32, 16: 16}, mapping_layers=0)
    g0 = Generator(style_dim=2560, **small).eval()
    g = Generator(style_dim=2590, **small).eval()
    motion = generator_from_g0(g, g0.state_dict())
    id_vec, id_map = torch.randn(4, 2048), torch.randn(4, 512, 4, 4)
    codes = torch.randn(4, MOTION_DIM) * 3
    with torch.no_grad():
        assert torch.allclose(g(torch.cat([id_vec, codes], 1), id_map),
                              g0(torch.cat([id_vec, torch.zeros(4, 512)], 1), id_map), atol=1e-5)
        # f_mot an exact affine function of the codes: the ridge fit recovers it, the fold makes G = G0.
        truth, offset = torch.randn(MOTION_DIM, 512) * 0.01, torch.randn(512) * 0.1
        fit_codes = torch.randn(2000, MOTION_DIM) * torch.rand(MOTION_DIM) * 5
        code_map, shift = ridge_code_map(fit_codes, fit_codes @ truth + offset, ridge=1e-8)
        assert torch.allclose(code_map.float(), truth, atol=1e-4) and torch.allclose(shift.float(), offset, atol=1e-4)
        fold_codes_into_generator(g, motion, code_map, shift)
        assert torch.allclose(g(torch.cat([id_vec, codes], 1), id_map),
                              g0(torch.cat([id_vec, codes @ truth + offset], 1), id_map), atol=1e-4)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_trains_a_step(tmp_path, world_cache):
    cmd = [sys.executable, "train.py", "experiment=synthtalk/stage2", "trainer=ddp_sim", "trainer.max_steps=2",
           *tiny(world_cache, callbacks="callbacks=channels_last"), f"hydra.run.dir={tmp_path}", "~logger",
           "trainer.val_check_interval=100"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "export" / "motion_model.pth").exists()


def test_stage2_lip_code_rank_folds_a_rank_k_projection_into_the_lip_head(tmp_path, world_cache):
    """The fold leaves the lip head's keys and shapes, and its codes become the rank-k principal
    projection (standardised by the banked codes) of the codes before it."""
    cfg = compose_train(["experiment=synthtalk/stage2", *tiny(world_cache), "model.lip_code_rank=3",
                         "model.lip_code_fold=pca"], tmp_path)
    pl.seed_everything(0)
    _, model = build(cfg)
    features = torch.randn(64, model.motion.mouth_embed[1].in_features)
    before = model.motion.mouth_code(features).double()
    model.lip_leakage.code_bank.push(before[:6].float())
    model.on_train_end()  # a one-step debug run banks too few codes for a basis: left as trained
    assert torch.equal(model.motion.mouth_code(features).double(), before)
    model.lip_leakage.code_bank.push(before[6:].float())
    keys = {k: v.shape for k, v in model.motion.state_dict().items()}
    model.on_train_end()
    after = model.motion.mouth_code(features).double()
    assert {k: v.shape for k, v in model.motion.state_dict().items()} == keys
    mean, std = before.mean(0), before.std(0) + 1e-5
    z = (before - mean) / std
    basis = torch.linalg.svd(z, full_matrices=False)[2][:3]
    expected = mean + (z @ basis.T @ basis) * std
    assert torch.allclose(after, expected, atol=1e-4)
    singular = torch.linalg.svdvals((after - after.mean(0)) / std)
    assert float(singular[3]) < 1e-3 * float(singular[0]), "rank 3"
    bad = compose_train(["experiment=synthtalk/stage2", *tiny(world_cache), "model.lip_code_rank=-1"], tmp_path / "bad")
    with pytest.raises(Exception, match="lip_code_rank must be in"):  # hydra wraps the ValueError
        build(bad)
