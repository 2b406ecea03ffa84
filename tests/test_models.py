"""The model registry: seed-cnn is exactly the original network, qdnet the default; both take raw
pixels and rebuild from a checkpoint alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qdkit.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from qdkit.errors import QdkitError
from qdkit.models import DEFAULT_MODEL, MODELS, QDNet, SeedCNN, build_model


def _drawings(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def test_seed_cnn_is_the_original_architecture():
    m = SeedCNN(num_classes=10, dropout=0.5)
    convs = [layer for layer in m.modules() if isinstance(layer, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (3, 3), (1, 1)),
        (16, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    assert sum(isinstance(layer, nn.MaxPool2d) for layer in m.modules()) == 3
    assert not any(isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)) for layer in m.modules())
    linears = [layer for layer in m.modules() if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(576, 200), (200, 10)]
    drop = [layer for layer in m.modules() if isinstance(layer, nn.Dropout)]
    assert len(drop) == 1 and drop[0].p == 0.5
    expected = (16 * 9 + 16) + (32 * 16 * 9 + 32) + (64 * 32 * 9 + 64) + (576 * 200 + 200) + (200 * 10 + 10)
    assert sum(p.numel() for p in m.parameters()) == expected


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_take_raw_pixels(name):
    torch.manual_seed(0)
    m = build_model(name, num_classes=7).eval()
    x = _drawings()
    with torch.no_grad():
        out_u8 = m(x)
        out_float = m(x.float())
        out_3d = m(x.squeeze(1))
    assert out_u8.shape == (6, 7) and out_u8.dtype == torch.float32
    torch.testing.assert_close(out_u8, out_float)
    torch.testing.assert_close(out_u8, out_3d)


def test_qdnet_is_the_default_and_trains_in_batch_mode():
    assert DEFAULT_MODEL == "qdnet"
    m = QDNet(num_classes=4)
    assert any(isinstance(layer, nn.BatchNorm2d) for layer in m.modules())
    loss = nn.functional.cross_entropy(m(_drawings(8)), torch.arange(8) % 4)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    # Small enough to train quickly on a CPU.
    assert sum(p.numel() for p in m.parameters()) < 1_000_000


def test_unknown_model_is_a_user_error():
    with pytest.raises(QdkitError, match="unknown model 'resnet'"):
        build_model("resnet", num_classes=3)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpoint_rebuilds_the_model_alone(tmp_path, name):
    torch.manual_seed(1)
    m = build_model(name, num_classes=3, dropout=0.25).eval()
    path = save_checkpoint(
        tmp_path / "m.pt",
        model=m,
        model_name=name,
        model_kwargs={"dropout": 0.25},
        class_names=["a", "b", "c"],
        epoch=3,
        metrics={"val_accuracy": 0.5},
    )
    ckpt = load_checkpoint(path)  # weights_only=True inside
    rebuilt, ckpt = model_from_checkpoint(ckpt)
    assert ckpt["model_name"] == name and ckpt["class_names"] == ["a", "b", "c"] and ckpt["epoch"] == 3
    x = _drawings()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), m(x))


def test_recipes_and_cli_help_match_the_registry():
    """Every model has a recipe, and `qdkit train --help` shows each recipe value (rendered from
    qdkit.train.recipes, which the CLI imports without torch)."""
    from click.testing import CliRunner

    from qdkit.cli import main
    from qdkit.models import recipe as recipe_of
    from qdkit.train.recipes import recipe_values

    RECIPES = {name: recipe_of(name) for name in MODELS}

    assert set(RECIPES) == set(MODELS)
    help_text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    for key in RECIPES[DEFAULT_MODEL]:
        for model, recipe in RECIPES.items():
            value = recipe[key]
            shown = (
                ("on" if value else "off")
                if isinstance(value, bool)
                else f"{value:g}"
                if isinstance(value, (int, float))
                else value
            )
            assert f"{model} {shown}" in recipe_values(key), (key, model)
        assert recipe_values(key) in help_text, key
