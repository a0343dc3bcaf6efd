"""PyTorch twin of `recipe.models.ResNet` and a timm/torchvision-style training step.

Same architecture as `recipe.models.create_model` (v1 basic/bottleneck blocks, projection
shortcuts "option B" wherever the shape changes, stride on the 3×3 conv, CIFAR or ImageNet stem,
global average pool, fc), same init (Kaiming normal fan-out on convs, fc N(0, 0.01²), γ = 0 on
the last BN of each block), BN momentum 0.1 (PyTorch's convention for Flax's 0.9), ε = 1e-5.

The step is what a PyTorch user would write with the usual tools: SGD (Nesterov, momentum 0.9)
with two parameter groups (no weight decay on BatchNorm γ/β, as timm's `param_groups_weight_decay`
does for norm layers), `LinearLR` warmup chained to `MultiStepLR` with `SequentialLR`, and
`CrossEntropyLoss(label_smoothing=0.1)`.

Only bench/ imports torch (the `bench` extra).
"""

from collections.abc import Sequence

import torch
from torch import nn

# (stage sizes, bottleneck?, default width, stem) as in recipe.models._CONFIGS.
CONFIGS = {
    **{f"resnet{d}": (((d - 2) // 6,) * 3, False, 16, "cifar") for d in (8, 20, 32, 44, 56, 110)},
    "resnet18": ((2, 2, 2, 2), False, 64, "imagenet"),
    "resnet34": ((3, 4, 6, 3), False, 64, "imagenet"),
    "resnet50": ((3, 4, 6, 3), True, 64, "imagenet"),
}


def _bn(channels: int, zero: bool = False) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)
    nn.init.zeros_(bn.weight) if zero else nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, filters: int, stride: int, zero_init_last_bn: bool):
        super().__init__()
        self.conv1 = _conv(cin, filters, 3, stride)
        self.bn1 = _bn(filters)
        self.conv2 = _conv(filters, filters, 3)
        self.bn_last = _bn(filters, zero_init_last_bn)
        self.proj = None
        if stride != 1 or cin != filters:
            self.proj = nn.Sequential(_conv(cin, filters, 1, stride), _bn(filters))

    def forward(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn_last(self.conv2(y))
        return torch.relu(y + shortcut)


class BottleneckBlock(nn.Module):
    expansion = 4

    def __init__(self, cin: int, filters: int, stride: int, zero_init_last_bn: bool):
        super().__init__()
        out = filters * 4
        self.conv1 = _conv(cin, filters, 1)
        self.bn1 = _bn(filters)
        self.conv2 = _conv(filters, filters, 3, stride)
        self.bn2 = _bn(filters)
        self.conv3 = _conv(filters, out, 1)
        self.bn_last = _bn(out, zero_init_last_bn)
        self.proj = None
        if stride != 1 or cin != out:
            self.proj = nn.Sequential(_conv(cin, out, 1, stride), _bn(out))

    def forward(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn_last(self.conv3(y))
        return torch.relu(y + shortcut)


class ResNet(nn.Module):
    def __init__(
        self,
        name: str,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        num_filters: int | None = None,
        stage_sizes: Sequence[int] | None = None,
        stem: str | None = None,
        zero_init_last_bn: bool = True,
    ):
        super().__init__()
        default_stages, bottleneck, width, default_stem = CONFIGS[name]
        stage_sizes = default_stages if stage_sizes is None else stage_sizes
        width = num_filters or width
        stem = stem or default_stem
        block_cls = BottleneckBlock if bottleneck else BasicBlock
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                _bn(width),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(_conv(in_channels, width, 3), _bn(width), nn.ReLU())
        blocks, cin = [], width
        for stage, num_blocks in enumerate(stage_sizes):
            filters = width * 2**stage
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(block_cls(cin, filters, stride, zero_init_last_bn))
                cin = filters * block_cls.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: no weight decay on norm layers' γ/β, `weight_decay` on everything else."""
    norm, rest = [], []
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        (norm if isinstance(module, nn.modules.batchnorm._BatchNorm) else rest).extend(params)
    return [
        {"params": rest, "weight_decay": weight_decay},
        {"params": norm, "weight_decay": 0.0},
    ]


def build_training(
    model: nn.Module,
    *,
    base_lr: float,
    k: float,
    warmup_steps: int,
    milestones: list[int],
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.1,
):
    """SGD Nesterov + LinearLR warmup (η → kη) + MultiStepLR, label-smoothed cross-entropy."""
    optimizer = torch.optim.SGD(
        param_groups(model, weight_decay), lr=base_lr * k, momentum=0.9, nesterov=True
    )
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / k, end_factor=1.0, total_iters=warmup_steps
    )
    decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer, [warmup, decay], milestones=[warmup_steps]
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def step(images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        loss = criterion(logits, labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss.detach(), (logits.argmax(-1) == labels).float().mean()

    return step
