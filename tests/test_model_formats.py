"""Weights files people have: ``.safetensors`` for every model source that takes weights, and
timm architectures by name (``timm:<name>``) with their weights from a local file."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from dsv import config as cfg
from dsv.builtin.models import ConvNet, ModelError, load_state_dict
from dsv.errors import ConfigError, WeightsError
from dsv.plugins import ModelRequest, get_plugin_manager


def build(name: str, weights: str = "", data=None, **options):
    request = ModelRequest(data=data, weights_path=weights)
    spec = cfg.PluginSpec(name=name, options=options)
    return cfg.build(spec, get_plugin_manager().registry("models"), source="p.toml", path="model", request=request)


def save_safetensors(module: torch.nn.Module, path) -> str:
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))
    return str(path)


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, shape) -> None:
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = a.eval()(x), b(x)
    assert torch.equal(expected, got)


def test_safetensors_weights_load_into_the_convnet(tmp_path, digits_bundle):
    torch.manual_seed(3)
    original = ConvNet(1, 8, 10, width=8, depth=2)
    path = save_safetensors(original, tmp_path / "convnet.safetensors")
    loaded = build("convnet", path, digits_bundle, width=8, depth=2)
    assert not loaded.trainable
    same_outputs(original, loaded.module, (1, 8, 8))


def test_safetensors_weights_load_into_a_torchvision_model(tmp_path):
    import torchvision

    torch.manual_seed(4)
    original = torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=10)
    path = save_safetensors(original, tmp_path / "squeeze.safetensors")
    loaded = build("torchvision:squeezenet1_1", path, num_classes=10, size=64)
    same_outputs(original, loaded.module, (3, 64, 64))


def test_safetensors_weights_load_into_a_module_factory(tmp_path, digits_bundle, monkeypatch):
    factory_module = types.ModuleType("my_models")
    factory_module.small = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    monkeypatch.setitem(sys.modules, "my_models", factory_module)
    torch.manual_seed(5)
    original = factory_module.small()
    path = save_safetensors(original, tmp_path / "small.safetensors")
    loaded = build("module:my_models:small", path, digits_bundle)
    same_outputs(original, loaded.module, (1, 8, 8))


def test_a_broken_safetensors_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(WeightsError) as info:
        load_state_dict(bad)
    assert str(info.value).startswith(f"{bad}: not a loadable safetensors file")
    assert len(str(info.value).splitlines()) == 1


def test_a_safetensors_file_that_does_not_fit_names_the_file(tmp_path, digits_bundle):
    path = save_safetensors(ConvNet(1, 8, 10, width=4, depth=1), tmp_path / "other.safetensors")
    with pytest.raises(WeightsError, match="weights do not fit the model"):
        build("convnet", path, digits_bundle, width=8, depth=2)


# ---- timm ----------------------------------------------------------------------------------------


@pytest.fixture
def timm():
    return pytest.importorskip("timm", reason="timm is not installed (pip install dsv[timm])")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_timm_model_loads_by_name_with_local_weights_and_its_pretrained_config(tmp_path, timm, suffix):
    torch.manual_seed(6)
    original = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    path = tmp_path / f"test_resnet{suffix}"
    if suffix == ".safetensors":
        save_safetensors(original, path)
    else:
        torch.save(original.state_dict(), path)
    names = [f"class {i}" for i in range(10)]
    loaded = build("timm:test_resnet", str(path), num_classes=10, classes=names)
    same_outputs(original, loaded.module, (3, 160, 160))
    config = original.pretrained_cfg
    assert (loaded.spec.channels, loaded.spec.size) == (config["input_size"][0], config["input_size"][-1])
    assert loaded.spec.mean == tuple(config["mean"]) and loaded.spec.std == tuple(config["std"])
    assert loaded.spec.classes == names
    # the domain of pixels in [0, 1] under timm's normalization
    assert loaded.spec.low == pytest.approx(tuple((0 - m) / s for m, s in zip(config["mean"], config["std"])))


def test_a_timm_model_of_1000_classes_gets_imagenet_names(tmp_path, timm):
    original = timm.create_model("test_efficientnet", pretrained=False)
    loaded = build("timm:test_efficientnet", save_safetensors(original, tmp_path / "e.safetensors"))
    assert loaded.spec.num_classes == 1000 and loaded.spec.classes[0] == "tench"
    assert loaded.spec.mean == (0.485, 0.456, 0.406)


def test_a_timm_model_without_weights_is_refused_and_nothing_is_downloaded(timm):
    with pytest.raises(ModelError, match="dsv never downloads weights"):
        build("timm:test_resnet")


def test_an_unknown_timm_name_is_one_clear_error(tmp_path, timm):
    with pytest.raises(ModelError, match="timm has no model 'test_resnot'"):
        build("timm:test_resnot", str(tmp_path / "w.safetensors"))


def test_wrong_class_names_for_a_timm_model(tmp_path, timm):
    original = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    path = save_safetensors(original, tmp_path / "r.safetensors")
    with pytest.raises(ModelError, match="2 class names for a model of 3 classes"):
        build("timm:test_resnet", path, num_classes=3, classes=["a", "b"])
    with pytest.raises(ConfigError, match="model.depth: unknown option of 'timm:test_resnet'"):
        build("timm:test_resnet", path, depth=3)
