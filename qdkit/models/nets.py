"""The networks (torch). Normalisation is each model's first layer (`PixelInput`), so a model — and
the ONNX graph exported from it — takes raw Quick Draw pixels and no preprocessing constant lives
anywhere else. They are registered by name, with their recipes, in qdkit.models."""

from __future__ import annotations

import torch
from torch import nn


class PixelInput(nn.Module):
    """Raw pixels (uint8 or float in 0..255; (N,28,28) or (N,1,28,28)) -> normalised float32 NCHW."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0 / (255.0 * std)), persistent=False)
        self.register_buffer("shift", torch.tensor(mean / std), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return x.to(torch.float32) * self.scale - self.shift


class SeedCNN(nn.Module):
    """The original QuickDrawClassifier network: three 3x3 conv (16/32/64) + ReLU + 2x2 max-pool,
    dropout, then 576 -> 200 -> classes. Input scaled to [0, 1] as torchvision's ToTensor did."""

    def __init__(self, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.input = PixelInput(mean=0.0, std=1.0)
        layers: list[nn.Module] = []
        for c_in, c_out in [(1, 16), (16, 32), (32, 64)]:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * 3 * 3, 200),
            nn.ReLU(inplace=True),
            nn.Linear(200, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.input(x)))


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class QDNet(nn.Module):
    """qdkit's default: three VGG-style stages of two 3x3 conv + batch norm + ReLU (widths w, 2w, 4w),
    then a small fully connected head on a 3x3 map, so the classifier still sees where strokes are.

    Measured on real drawings (animals10, 600 per class, validation accuracy, 24 epochs): batch norm
    and two convs per stage train fast at a high learning rate; the 3x3 head did at least as well as
    global average pooling (79.4% vs 78.6%, within noise); width 48 took twice the time for +0.5
    points, so the default width is 32 (~0.58M parameters).
    """

    def __init__(self, num_classes: int, dropout: float = 0.3, width: int = 32, hidden: int = 256) -> None:
        super().__init__()
        w = width
        # Roughly the mean/std of Quick Draw pixels (ink covers ~20%): centres the input.
        self.input = PixelInput(mean=0.2, std=0.35)
        self.features = nn.Sequential(
            *_conv_bn(1, w),
            *_conv_bn(w, w),
            nn.MaxPool2d(2),  # 14x14
            *_conv_bn(w, 2 * w),
            *_conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),  # 7x7
            *_conv_bn(2 * w, 4 * w),
            *_conv_bn(4 * w, 4 * w),
            nn.MaxPool2d(2),  # 3x3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(4 * w * 9, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.input(x)))
