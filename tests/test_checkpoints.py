"""The official checkpoint API: export -> load round trips and the release's loading rules."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pdfgc.checkpoints import OFFICIAL_FILES, export_official, load_official
from pdfgc.errors import PdfgcError
from pdfgc.networks import Networks, build_networks

TSV = Path(__file__).resolve().parents[1].parent / "shared/reference/official_state_dict_keys.tsv"


def _perturb(networks: Networks) -> Networks:
    """Give BN statistics and noise weights non-default values so the round trip covers them."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, tensor in networks.state_dict().items():
            if name.endswith(("running_mean", "noise.weight")):
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=gen))
            elif name.endswith("running_var"):
                tensor.mul_(1 + 0.1 * torch.rand(tensor.shape, generator=gen))
    return networks.eval()


def _outputs(networks: Networks, side: int, batch: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    img = torch.rand(batch, 3, side, side, generator=gen) * 2 - 1
    mel = torch.rand(batch, 1, 80, 20, generator=gen)
    style = torch.randn(1, networks.generator.style_dim, generator=gen)
    with torch.no_grad():
        id_vec, id_map = networks.appearance(img)
        outs = [id_vec, id_map, *networks.motion(img), *networks.audio(mel)]
        outs.append(networks.generator(style, id_map[:1]))
    return outs


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """A small-config network set and its export folder (reused read-only by several tests)."""
    torch.manual_seed(0)
    networks = _perturb(build_networks("small"))
    directory = tmp_path_factory.mktemp("small_export")
    export_official(networks, directory)
    return networks, directory


def _copy_with(src: Path, dst: Path, part: str, edit) -> Path:
    """Copy the four files of ``src`` to ``dst``, the ``part`` file's state_dict changed by ``edit``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name, filename in OFFICIAL_FILES.items():
        state = torch.load(src / filename, weights_only=True)
        if name == part:
            state = edit(state)
        torch.save(state, dst / filename)
    return dst


# -- round trips ----------------------------------------------------------------------------------

def test_small_round_trip(small_export):
    networks, directory = small_export
    assert sorted(p.name for p in directory.iterdir()) == sorted(OFFICIAL_FILES.values())
    loaded = load_official(directory, networks_cfg="small")
    assert loaded.discriminator is None
    assert not any(m.training for m in loaded.modules())
    _assert_same(_outputs(networks, 64), _outputs(loaded, 64))
    for part, filename in OFFICIAL_FILES.items():
        state = torch.load(directory / filename, weights_only=True)
        assert list(state) == list(getattr(networks, part).state_dict())


def test_official_round_trip_and_keys(tmp_path):
    torch.manual_seed(0)
    networks = _perturb(build_networks("official"))
    written = export_official(networks, tmp_path)
    assert set(written) == set(OFFICIAL_FILES)
    if TSV.is_file():
        reference: dict[str, list[tuple[str, str]]] = {}
        for line in TSV.read_text().splitlines():
            if line and not line.startswith("#"):
                filename, key, shape = line.split("\t")
                reference.setdefault(filename, []).append((key, shape))
        for filename in OFFICIAL_FILES.values():
            state = torch.load(tmp_path / filename, weights_only=True)
            assert [(k, str(tuple(v.shape))) for k, v in state.items()] == reference[filename]
    expected = _outputs(networks, 224, batch=1)
    del networks
    loaded = load_official(tmp_path)  # default: the official config
    _assert_same(expected, _outputs(loaded, 224, batch=1))


def test_export_accepts_any_object_with_the_four_modules(small_export, tmp_path):
    networks, _ = small_export
    wrapped = SimpleNamespace(appearance=networks.appearance, motion=networks.motion,
                              audio=networks.audio, generator=networks.generator)
    export_official(wrapped, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OFFICIAL_FILES.values())
    with pytest.raises(PdfgcError, match="generator"):
        export_official(SimpleNamespace(appearance=networks.appearance, motion=networks.motion,
                                        audio=networks.audio), tmp_path / "incomplete")


# -- the release's skip rules ---------------------------------------------------------------------

def test_skipped_extra_keys_still_load(small_export, tmp_path):
    networks, directory = small_export

    def appearance(state):
        state["fc.weight"] = torch.zeros(3, 7)  # identity classifier of another size: skipped
        state["fc.extra"] = torch.zeros(1)
        return state

    def motion(state):
        state.update({"classifier.weight": torch.zeros(5, 512), "mouth_fc.0.weight": torch.zeros(2),
                      "to_feature.bias": torch.zeros(2), "to_embed.1.weight": torch.zeros(2),
                      "unknown.key": torch.zeros(1)})  # motion is intersection-only
        return state

    def audio(state):
        state.update({"model.layer4_exp.0.conv1.weight": torch.zeros(2, 2, 3, 3),
                      "model.attention_exp.0.weight": torch.zeros(2), "model.fc_exp.weight": torch.zeros(2),
                      "exp_embed.1.weight": torch.zeros(2), "fc.weight": torch.zeros(2)})
        return state

    def generator(state):
        state["extra.unused"] = torch.zeros(4)  # extra generator keys are ignored
        return state

    folder = directory
    for i, (part, edit) in enumerate([("appearance", appearance), ("motion", motion),
                                      ("audio", audio), ("generator", generator)]):
        folder = _copy_with(folder, tmp_path / f"step{i}", part, edit)
    loaded = load_official(folder, networks_cfg="small")
    _assert_same(_outputs(networks, 64), _outputs(loaded, 64))


def test_appearance_classifier_is_not_loaded(small_export, tmp_path):
    networks, directory = small_export

    def edit(state):
        state["fc.weight"] = state["fc.weight"] + 1.0
        return state

    loaded = load_official(_copy_with(directory, tmp_path, "appearance", edit), networks_cfg="small")
    assert not torch.equal(loaded.appearance.fc.weight, networks.appearance.fc.weight + 1.0)


def test_motion_missing_keys_keep_init_and_warn(small_export, tmp_path, caplog):
    _, directory = small_export

    def edit(state):
        del state["to_emo.0.weight"], state["emo_embed.1.bias"]
        return state

    folder = _copy_with(directory, tmp_path, "motion", edit)
    with caplog.at_level(logging.WARNING, logger="pdfgc.checkpoints"):
        load_official(folder, networks_cfg="small")
    assert any("2 of" in r.getMessage() and "motion_model.pth" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("part,key", [("generator", "noises.noise_3"),
                                      ("generator", "conv1.activate.bias"),
                                      ("appearance", "model.layer1.0.conv1.weight"),
                                      ("audio", "mouth_embed.1.bias")])
def test_missing_key_fails_naming_it(small_export, tmp_path, part, key):
    _, directory = small_export

    def edit(state):
        del state[key]
        return state

    folder = _copy_with(directory, tmp_path, part, edit)
    with pytest.raises(PdfgcError) as info:
        load_official(folder, networks_cfg="small")
    message = str(info.value)
    assert key in message and OFFICIAL_FILES[part] in message and "\n" not in message


def test_unexpected_key_fails_for_strict_nets(small_export, tmp_path):
    _, directory = small_export

    def edit(state):
        state["model.layer9.weight"] = torch.zeros(1)
        return state

    with pytest.raises(PdfgcError, match="model.layer9.weight"):
        load_official(_copy_with(directory, tmp_path, "audio", edit), networks_cfg="small")


def test_wrong_shape_names_both_shapes(small_export, tmp_path):
    _, directory = small_export

    def edit(state):
        state["conv1.conv.weight"] = torch.zeros(1, 2, 3, 3, 3)
        return state

    folder = _copy_with(directory, tmp_path, "generator", edit)
    with pytest.raises(PdfgcError) as info:
        load_official(folder, networks_cfg="small")
    message = str(info.value)
    assert "conv1.conv.weight" in message and "(1, 2, 3, 3, 3)" in message
    assert "(1, 128, 512, 3, 3)" in message and "generator_model.pth" in message


def test_module_prefix_is_accepted(small_export, tmp_path):
    networks, directory = small_export
    folder = directory
    for i, part in enumerate(OFFICIAL_FILES):
        folder = _copy_with(folder, tmp_path / f"p{i}", part,
                            lambda state: {f"module.{k}": v for k, v in state.items()})
    assert next(iter(torch.load(folder / "motion_model.pth", weights_only=True))).startswith("module.")
    _assert_same(_outputs(networks, 64), _outputs(load_official(folder, networks_cfg="small"), 64))


# -- bad folders and files ----------------------------------------------------------------------

def test_missing_directory_and_file(small_export, tmp_path):
    _, directory = small_export
    with pytest.raises(PdfgcError, match="directory not found"):
        load_official(tmp_path / "nowhere", networks_cfg="small")
    folder = _copy_with(directory, tmp_path / "partial", "audio", lambda s: s)
    (folder / "audio_model.pth").unlink()
    with pytest.raises(PdfgcError, match="audio_model.pth"):
        load_official(folder, networks_cfg="small")


@pytest.mark.parametrize("content", ["garbage", "list", "object", "nested"])
def test_unreadable_or_non_state_dict_files(small_export, tmp_path, content):
    _, directory = small_export
    folder = _copy_with(directory, tmp_path, "motion", lambda s: s)
    target = folder / "motion_model.pth"
    if content == "garbage":
        target.write_bytes(b"this is not a torch file")
    elif content == "list":
        torch.save([torch.zeros(1)], target)
    elif content == "object":
        torch.save({"a": SimpleNamespace(x=1)}, target)  # refused by weights_only
    else:
        torch.save({"state_dict": {"a": torch.zeros(1)}, "epoch": 3}, target)
    with pytest.raises(PdfgcError) as info:
        load_official(folder, networks_cfg="small")
    assert "motion_model.pth" in str(info.value) and "\n" not in str(info.value)


def test_export_leaves_no_temporary_files(small_export, tmp_path):
    networks, _ = small_export
    export_official(networks, tmp_path / "out")
    export_official(networks, tmp_path / "out")  # overwrite in place
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OFFICIAL_FILES.values())
