"""Tests of the image-network registry, weights loading, layers and preprocessing."""

from __future__ import annotations

import importlib.metadata
import logging

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn

from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.models import image
from bids_affect.models.image import (
    ENTRY_POINT_GROUP,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MATLAB_ALEXNET_MEAN,
    ImageFeatures,
    ImageNetworkEntry,
    Preprocessing,
    convert_emonet_pytorch_state_dict,
    create_image_network,
    image_network_entry,
    layer_activations,
    layer_module,
    list_image_networks,
    list_layers,
    load_plugin_image_networks,
    preprocess_images,
    register_image_network,
    unregister_image_network,
)

# torchvision's parameter names and shapes, written out by hand from torchvision's
# alexnet() and vgg16() (and, for EmoNet, from MATLAB's AlexNet with 20 outputs), so
# the tests fail if a module is renamed, moved or resized.
_ALEXNET_SHAPES = {
    "features.0": ((64, 3, 11, 11), (64,)), "features.3": ((192, 64, 5, 5), (192,)),
    "features.6": ((384, 192, 3, 3), (384,)), "features.8": ((256, 384, 3, 3), (256,)),
    "features.10": ((256, 256, 3, 3), (256,)), "classifier.1": ((4096, 9216), (4096,)),
    "classifier.4": ((4096, 4096), (4096,)), "classifier.6": ((1000, 4096), (1000,)),
}
_EMONET_SHAPES = {
    "features.0": ((96, 3, 11, 11), (96,)), "features.3": ((256, 48, 5, 5), (256,)),
    "features.6": ((384, 256, 3, 3), (384,)), "features.8": ((384, 192, 3, 3), (384,)),
    "features.10": ((256, 192, 3, 3), (256,)), "classifier.1": ((4096, 9216), (4096,)),
    "classifier.4": ((4096, 4096), (4096,)), "classifier.6": ((20, 4096), (20,)),
}
_VGG16_SHAPES = {
    **{f"features.{index}": ((out, into, 3, 3), (out,)) for index, out, into in (
        (0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128),
        (12, 256, 256), (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512),
        (24, 512, 512), (26, 512, 512), (28, 512, 512))},
    "classifier.0": ((4096, 25088), (4096,)), "classifier.3": ((4096, 4096), (4096,)),
    "classifier.6": ((1000, 4096), (1000,)),
}
TORCHVISION_SHAPES = {"alexnet": _ALEXNET_SHAPES, "emonet": _EMONET_SHAPES,
                      "vgg16": _VGG16_SHAPES}
N_OUTPUTS = {"alexnet": 1000, "emonet": 20, "vgg16": 1000}
#: Input side for forward tests: VGG16's adaptive pooling accepts 32x32 (5 pools to 1x1).
SMOKE_SIDE = {"alexnet": 224, "emonet": 227, "vgg16": 32}

NETWORKS = sorted(list_image_networks())


def _hand_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Every parameter filled with its own constant, under torchvision's names."""
    state, value = {}, 0.0
    for prefix, (weight, bias) in TORCHVISION_SHAPES[name].items():
        value += 1.0
        state[f"{prefix}.weight"] = torch.full(weight, value / 1000.0)
        state[f"{prefix}.bias"] = torch.full(bias, -value / 1000.0)
    return state


@pytest.fixture(scope="module")
def alexnet_random():
    return create_image_network("alexnet", weights="random", random_state=0)


def test_known_networks_are_registered():
    assert {"alexnet", "vgg16", "emonet"} <= set(NETWORKS)
    assert all(text for text in list_image_networks().values())
    # Every registered network is covered by the shape table of this module.
    assert set(NETWORKS) == set(TORCHVISION_SHAPES)


def test_unknown_network_lists_the_known_ones():
    with pytest.raises(UsageError) as info:
        image_network_entry("resnet50")
    message = str(info.value)
    assert "feature_network" in message and "alexnet, emonet, vgg16" in message
    assert info.value.exit_code == 64 and "\n" not in message


def test_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_image_network("alexnet", layers={"fc8": "classifier.6"},
                               preprocessing=image.TORCHVISION_IMAGENET)(image.alexnet)
    assert image_network_entry("alexnet").factory is image.alexnet


@pytest.mark.parametrize("name", NETWORKS)
def test_forward_shape_and_layers_in_forward_order(name):
    network = create_image_network(name, weights="random", random_state=0)
    side = SMOKE_SIDE[name]
    inputs = torch.from_numpy(np.random.default_rng(0).normal(
        size=(2, 3, side, side)).astype(np.float32))
    layers = list_layers(name)
    expected_names = {"alexnet": ["conv1", "conv5", "fc6", "fc7", "fc8"],
                      "emonet": ["conv1", "norm1", "conv5", "fc6", "fc7", "fc8"],
                      "vgg16": ["conv1_1", "conv5_3", "fc6", "fc7", "fc8"]}[name]
    assert set(expected_names) <= set(layers)
    order = []
    handles = [network.get_submodule(layer_module(name, layer)).register_forward_hook(
        lambda *_args, layer=layer: order.append(layer)) for layer in layers]
    with torch.no_grad():
        logits = network(inputs)
    for handle in handles:
        handle.remove()
    assert logits.shape == (2, N_OUTPUTS[name]) and torch.isfinite(logits).all()
    assert order == layers  # list_layers gives the forward order
    fc7 = layer_activations(network, inputs, layer_module(name, "fc7"))
    assert fc7.shape == (2, 4096)


@pytest.mark.parametrize("name", [
    # VGG16's file is 553 MB: writing and reading it takes 5-10 s.
    pytest.param(name, marks=pytest.mark.slow) if name == "vgg16" else name
    for name in NETWORKS])
def test_torchvision_state_dict_loads_strictly(name, tmp_path):
    state = _hand_state_dict(name)
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    network = create_image_network(name, weights=path)
    loaded = network.state_dict()
    assert list(loaded) == list(state)  # same names, same order as torchvision
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key
    assert not network.training


def test_checkpoint_wrappers_and_dataparallel_prefix_are_unwrapped(tmp_path, alexnet_random):
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "arch": "alexnet",
                "state_dict": {f"module.{k}": v for k, v in alexnet_random.state_dict().items()}},
               path)
    network = create_image_network("alexnet", weights=path)
    assert torch.equal(network.classifier[6].weight, alexnet_random.classifier[6].weight)


@pytest.mark.parametrize("change, first", [
    ("drop", "key 'classifier.6.bias' is missing from the file"),
    ("extra", "key 'classifier.7.weight' in the file is not in the network"),
    ("shape", "key 'classifier.6.weight' has shape (20, 4096) in the file but (1000, 4096)"),
])
def test_mismatched_weights_name_the_first_mismatch_and_the_file(change, first, tmp_path,
                                                                 alexnet_random):
    state = dict(alexnet_random.state_dict())
    if change == "drop":
        del state["classifier.6.bias"]
    elif change == "extra":
        state["classifier.7.weight"] = torch.zeros(2)
    else:  # EmoNet's 20-category fc8 given to alexnet
        state["classifier.6.weight"] = torch.zeros(20, 4096)
        state["classifier.6.bias"] = torch.zeros(20)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    with pytest.raises(InputDataError) as info:
        create_image_network("alexnet", weights=path)
    message = str(info.value)
    assert message.startswith(str(path)) and first in message and "\n" not in message
    assert info.value.exit_code == 65


def test_weights_file_problems(tmp_path):
    with pytest.raises(InputMissingError) as missing:
        create_image_network("alexnet", weights=tmp_path / "absent.pth")
    assert missing.value.exit_code == 66 and "absent.pth" in str(missing.value)
    with pytest.raises(UsageError, match="feature_weights"):
        create_image_network("alexnet", weights=tmp_path / "weights.h5")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(InputDataError, match="cannot read weights"):
        create_image_network("alexnet", weights=corrupt)
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(InputDataError, match="no state dict"):
        create_image_network("alexnet", weights=not_a_state_dict)


@pytest.mark.parametrize("weights", [None, "", "  "])
def test_random_weights_only_when_asked(weights):
    with pytest.raises(UsageError) as info:
        create_image_network("alexnet", weights=weights)
    assert "feature_weights" in str(info.value) and "random" in str(info.value)


def test_random_weights_are_seeded_and_leave_torch_rng_alone():
    before = torch.random.get_rng_state()
    first = create_image_network("emonet", weights="random", random_state=5)
    again = create_image_network("emonet", weights="random", random_state=5)
    other = create_image_network("emonet", weights="random", random_state=6)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (key, a), b, c in zip(first.state_dict().items(), again.state_dict().values(),
                              other.state_dict().values()):
        assert torch.equal(a, b), key
        assert not torch.equal(a, c), key
    # torchvision's initialisation: biases of VGG start at zero, AlexNet's do not.
    vgg = create_image_network("vgg16", weights="random", random_state=0)
    assert float(vgg.features[0].bias.detach().abs().max()) == 0.0
    assert float(first.features[0].bias.detach().abs().max()) > 0.0


class _EmoNetPort(nn.Module):
    """The module layout of ecco-laboratory/emonet-pytorch (fc layers as convolutions)."""

    def __init__(self):
        super().__init__()

        def lrn():
            return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

        self.conv_0 = nn.Sequential(nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), lrn(),
                                    nn.MaxPool2d(3, 2))
        self.conv_1 = nn.Sequential(nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(),
                                    lrn(), nn.MaxPool2d(3, 2))
        self.conv_2 = nn.Sequential(nn.Conv2d(256, 384, 3, padding=1), nn.ReLU())
        self.conv_3 = nn.Sequential(nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU())
        self.conv_4 = nn.Sequential(nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(),
                                    nn.MaxPool2d(3, 2))
        self.conv_5 = nn.Sequential(nn.Conv2d(256, 4096, 6), nn.ReLU())
        self.conv_6 = nn.Sequential(nn.Conv2d(4096, 4096, 1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(4096, 20, 1), nn.Flatten(-3, -1),
                                        nn.Softmax(dim=-1))

    def forward(self, x):
        for block in (self.conv_0, self.conv_1, self.conv_2, self.conv_3, self.conv_4,
                      self.conv_5, self.conv_6, self.classifier):
            x = block(x)
        return x


def test_emonet_pytorch_port_weights_give_the_same_outputs(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        port = _EmoNetPort().eval()
        with torch.no_grad():  # spread the logits so the comparison is not trivial
            port.classifier[0].weight.mul_(50.0)
    path = tmp_path / "emonet_port.pth"
    torch.save(port.state_dict(), path)
    network = create_image_network("emonet", weights=path)
    inputs = torch.from_numpy(np.random.default_rng(1).uniform(
        -100, 100, size=(2, 3, 227, 227)).astype(np.float32))
    with torch.no_grad():
        expected = port(inputs)
        logits = network(inputs)
    assert float(expected.max() - expected.min()) > 0.01
    torch.testing.assert_close(logits.softmax(1), expected, rtol=1e-4, atol=1e-6)
    assert convert_emonet_pytorch_state_dict(network.state_dict()).keys() == \
        network.state_dict().keys()


def test_unknown_layer_lists_the_valid_ones():
    with pytest.raises(UsageError) as info:
        layer_module("alexnet", "fc9")
    message = str(info.value)
    assert message.startswith("feature_layer:") and "fc9" in message
    assert ", ".join(list_layers("alexnet")) in message


def test_layer_activations_stop_early_restore_mode_and_need_no_grad(alexnet_random):
    later_calls = []
    handle = alexnet_random.classifier[6].register_forward_hook(
        lambda *_: later_calls.append(1))
    alexnet_random.train()
    inputs = torch.zeros(1, 3, 224, 224, requires_grad=True)
    try:
        out = layer_activations(alexnet_random, inputs, "features.0")
    finally:
        handle.remove()
        training = alexnet_random.training
        alexnet_random.eval()
    assert out.shape == (1, 64, 55, 55) and not out.requires_grad
    assert later_calls == [] and training
    # Not in place: a convolution's output stays negative where its ReLU would zero it.
    assert float(out.min()) < 0


def test_image_features_pool_conv_layers_and_keep_fc(alexnet_random, rng):
    images = rng.integers(0, 256, size=(3, 50, 70, 3), dtype=np.uint8)
    conv = ImageFeatures("alexnet", "conv5", weights="random", random_state=0).fit()
    fc = ImageFeatures("alexnet", "fc7", weights="random", random_state=0,
                       batch_size=2).fit()
    inputs = preprocess_images(images, image_network_entry("alexnet").preprocessing)
    with torch.no_grad():
        maps = alexnet_random.features[:11](inputs)
        hidden = alexnet_random.classifier[:5](torch.flatten(
            alexnet_random.avgpool(alexnet_random.features(inputs)), 1))
    np.testing.assert_allclose(conv.transform(images), maps.mean(dim=(2, 3)).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fc.transform(images), hidden.numpy(), rtol=1e-5, atol=1e-5)
    assert conv.provenance()["pooling"].startswith("spatial mean")
    assert fc.provenance()["pooling"].startswith("none")
    assert fc.provenance()["weights"] == "random" and fc.provenance()["random_seed"] == 0
    assert list(fc.get_feature_names_out()[:2]) == ["fc7_0000", "fc7_0001"]
    # batches of 2 and of 16 give the same features
    np.testing.assert_allclose(fc.transform(images), clone(fc).set_params(
        batch_size=16).fit().transform(images), rtol=1e-5, atol=1e-6)


def test_image_features_estimator_contract(tmp_path):
    extractor = ImageFeatures("emonet", "fc9", weights="random")
    assert clone(extractor).get_params()["layer"] == "fc9"
    with pytest.raises(NotFittedError):
        extractor.transform(np.zeros((1, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(UsageError, match="feature_layer"):
        extractor.fit()
    with pytest.raises(UsageError, match="batch_size"):
        ImageFeatures("emonet", "fc7", weights="random", batch_size=0).fit()
    torch.save({"x": torch.zeros(1)}, tmp_path / "w.pth")
    fitted = ImageFeatures("emonet", "conv1", weights=tmp_path / "w.pth")
    with pytest.raises(InputDataError, match="w.pth"):
        fitted.fit()


def test_torchvision_preprocessing_resizes_the_shorter_side_and_crops_the_centre():
    image_ = np.zeros((200, 400, 3), dtype=np.uint8)
    image_[:, 200:] = 255  # black left half, white right half
    x = preprocess_images(image_, image.TORCHVISION_IMAGENET)
    assert x.shape == (1, 3, 224, 224)
    white = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    black = -IMAGENET_MEAN[0] / IMAGENET_STD[0]
    red = x[0, 0, 100].numpy()
    # 200x400 -> 256x512; the crop keeps columns 144-367, the edge at 256 falls at 112.
    np.testing.assert_allclose(red[:100], black, atol=1e-5)
    np.testing.assert_allclose(red[125:], white, atol=1e-5)
    assert black < red[111] < white or black < red[112] < white


def test_emonet_preprocessing_resizes_to_227_and_subtracts_the_matlab_mean():
    images = np.full((2, 90, 160), 200, dtype=np.uint8)  # grey-scale, aspect not kept
    x = preprocess_images(images, image_network_entry("emonet").preprocessing)
    assert x.shape == (2, 3, 227, 227)
    np.testing.assert_allclose(x[:, :, 50, 50].numpy(),
                               np.tile(200 - np.asarray(MATLAB_ALEXNET_MEAN), (2, 1)),
                               rtol=1e-6)
    with pytest.raises(UsageError, match="uint8"):
        preprocess_images(images.astype(np.float32), image.MATLAB_ALEXNET)


# --------------------------------------------------------------------------- plug-ins


def _tiny_factory() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2, 2))


TINY_PREPROCESSING = Preprocessing((8, 8), None, 255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
PLUGIN_ENTRY = ImageNetworkEntry("ignored", _tiny_factory, {"conv1": "0", "fc1": "4"},
                                 TINY_PREPROCESSING, "a tiny plug-in network")


def test_plugins_from_entry_points(monkeypatch, caplog):
    points = [
        importlib.metadata.EntryPoint("tinyplugin", f"{__name__}:PLUGIN_ENTRY",
                                      ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("bare", f"{__name__}:_tiny_factory", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("broken", "no_such_module_xyz:thing", ENTRY_POINT_GROUP),
    ]
    calls = []

    def entry_points(group=None):
        calls.append(group)
        return points

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setitem(image._PLUGINS, "loaded", False)
    try:
        with caplog.at_level(logging.WARNING, logger="bids_affect.models.image"):
            assert load_plugin_image_networks() == ["tinyplugin"]
        assert calls == [ENTRY_POINT_GROUP]
        assert "broken" in caplog.text and "bare" in caplog.text
        assert list_layers("tinyplugin") == ["conv1", "fc1"]
        network = create_image_network("tinyplugin", weights="random", random_state=0)
        features = ImageFeatures("tinyplugin", "fc1", weights="random").fit()
        assert features.transform(np.zeros((1, 5, 5, 3), np.uint8)).shape == (1, 2)
        assert isinstance(network, nn.Sequential)
        # Loading again is harmless; another package taking the name is an error.
        assert load_plugin_image_networks(reload=True) == []
        points[0] = importlib.metadata.EntryPoint("alexnet", f"{__name__}:PLUGIN_ENTRY",
                                                  ENTRY_POINT_GROUP)
        with pytest.raises(UsageError, match="already registered"):
            load_plugin_image_networks(reload=True)
    finally:
        unregister_image_network("tinyplugin")


class _Scaled(nn.Module):
    """A constant that no state dict holds (a non-persistent buffer)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

    def forward(self, x):
        return x * self.scale


def test_weights_file_keeps_buffers_that_no_state_dict_holds(tmp_path):
    register_image_network("buffered", layers={"out": "1"},
                           preprocessing=TINY_PREPROCESSING)(
        lambda: nn.Sequential(nn.Conv2d(3, 1, 1), _Scaled()))
    try:
        path = tmp_path / "buffered.pth"
        torch.save({"0.weight": torch.ones(1, 3, 1, 1), "0.bias": torch.zeros(1)}, path)
        network = create_image_network("buffered", weights=path)
        out = layer_activations(network, torch.ones(1, 3, 2, 2), "1")
        assert torch.equal(out, torch.full((1, 1, 2, 2), 6.0))
    finally:
        unregister_image_network("buffered")
