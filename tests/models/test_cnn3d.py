"""Tests of the architecture registry and of every registered 3D CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bids_affect.exceptions import UsageError
from bids_affect.models.cnn3d import (
    VolumeClassifier,
    create_architecture,
    list_architectures,
    register_architecture,
    unregister_architecture,
)

SHAPE = (12, 14, 12)


def _fresh(name: str, n_classes: int = 3, shape: tuple[int, ...] = SHAPE) -> VolumeClassifier:
    """A network initialised from a local seed, leaving the caller's torch RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_architecture(name, n_classes=n_classes, input_shape=shape)


def test_known_architectures_are_registered():
    names = list_architectures()
    assert {"neuro120fp", "deepemotion"} <= set(names)
    assert all(isinstance(text, str) and text for text in names.values())


@pytest.mark.parametrize("name", sorted(list_architectures()))
def test_forward_backward_smoke(name, rng):
    model = _fresh(name).train()
    assert isinstance(model, VolumeClassifier)
    inputs = torch.from_numpy(rng.normal(size=(3, 1, *SHAPE)).astype(np.float32))
    logits = model(inputs)
    assert logits.shape == (3, 3)
    nn.CrossEntropyLoss()(logits, torch.tensor([0, 1, 2])).backward()
    gradients = [p.grad for p in model.parameters() if p.requires_grad]
    assert gradients and all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert any(g.abs().sum() > 0 for g in gradients)

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs), model.head(model.trunk(inputs)))
        features = model.embed(inputs)
    assert features.ndim == 2 and features.shape[0] == 3
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("shape", [SHAPE, (24, 24, 16), (80, 80, 35)])
def test_neuro120fp_has_seed_003_parameter_count(shape):
    model = _fresh("neuro120fp", n_classes=5, shape=shape)
    assert sum(p.numel() for p in model.parameters()) == 424_549


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(UsageError, match="neuro120fp") as info:
        create_architecture("resnet9000", n_classes=2, input_shape=SHAPE)
    assert info.value.exit_code == 64


@pytest.mark.parametrize(("n_classes", "shape"), [(1, SHAPE), (3, (12, 14)), (3, (0, 4, 4))])
def test_bad_arguments_are_usage_errors(n_classes, shape):
    with pytest.raises(UsageError):
        create_architecture("neuro120fp", n_classes=n_classes, input_shape=shape)


def test_registering_twice_is_an_error():
    @register_architecture("test_tiny", description="one convolution")
    def tiny(n_classes, input_shape):
        return VolumeClassifier(nn.Sequential(nn.Conv3d(1, 2, 3, padding=1)),
                                nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                                              nn.Linear(2, n_classes)))

    try:
        assert "test_tiny" in list_architectures()
        with pytest.raises(ValueError, match="already registered"):
            register_architecture("test_tiny")(tiny)
    finally:
        unregister_architecture("test_tiny")
    assert "test_tiny" not in list_architectures()


# --------------------------------------------------------------------------- plug-ins


def plugin_tiny(n_classes, input_shape):
    """One convolution and a global pool (a plug-in for tests)."""
    from bids_affect.models.cnn3d import GlobalPoolHead

    return VolumeClassifier(nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU()),
                            GlobalPoolHead(4, n_classes))


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Make ``importlib.metadata.entry_points`` return the given entry points."""
    import importlib.metadata

    from bids_affect.models import cnn3d

    def install(*entry_points):
        def entry_points_of(group=None, **_):
            return [ep for ep in entry_points if group is None or ep.group == group]

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points_of)
        monkeypatch.setitem(cnn3d._PLUGINS, "loaded", False)

    yield install
    for name in ("plugtiny", "plugbroken"):
        unregister_architecture(name)


def _entry_point(name: str, value: str):
    import importlib.metadata

    from bids_affect.models.cnn3d import ENTRY_POINT_GROUP

    return importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def test_plugin_architectures_come_from_entry_points(fake_entry_points, caplog):
    from bids_affect.decoding import check_models, make_decoder

    fake_entry_points(_entry_point("plugtiny", f"{__name__}:plugin_tiny"),
                      _entry_point("plugbroken", "no_such_module_anywhere:factory"))
    # Lazily loaded: the first read of the registry finds the plug-in.
    names = list_architectures()
    assert names["plugtiny"] == "One convolution and a global pool (a plug-in for tests)."
    assert "plugbroken" not in names and "plugbroken" in caplog.text
    model = create_architecture("plugtiny", n_classes=3, input_shape=SHAPE)
    assert model(torch.zeros(2, 1, *SHAPE)).shape == (2, 3)
    # ... and the decoders and --models accept it.
    assert check_models(["cnn-plugtiny"]) == ["cnn-plugtiny"]
    assert make_decoder("cnn-plugtiny").architecture == "plugtiny"


def test_plugin_found_by_create_architecture_first(fake_entry_points):
    fake_entry_points(_entry_point("plugtiny", f"{__name__}:plugin_tiny"))
    assert create_architecture("plugtiny", 2, SHAPE)(torch.zeros(1, 1, *SHAPE)).shape == (1, 2)


def test_plugin_module_registers_itself_and_name_clashes_are_refused(fake_entry_points):
    # A module entry point registers its architectures on import (none here).
    fake_entry_points(_entry_point("anything", "bids_affect.models.cnn3d"))
    assert set(list_architectures()) >= {"neuro120fp", "deepemotion"}
    fake_entry_points(_entry_point("deepemotion", f"{__name__}:plugin_tiny"))
    with pytest.raises(UsageError, match="already registered"):
        list_architectures()
