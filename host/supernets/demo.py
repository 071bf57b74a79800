"""The demo super-network: a small elastic CNN on scikit-learn's handwritten digits, trained in a minute.

It is the embedded default that `fleetnas demo` searches. Its accuracy objective is real (top-1 on a
held-out split, with weights inherited from a super-network trained here with the sandwich rule), yet
nothing is downloaded: the 1797 8×8 digits ship with scikit-learn.

Elasticity follows Once-for-All (OFA): a block's kernel is the centre crop of the largest kernel, its
width the first channels of the widest, a stage's depth its first blocks. The input resolution is
elastic too (the digits are upsampled), which spreads the sub-networks' cost wide enough to measure
on a CPU.

torch is imported lazily: device agents and `fleetnas space list` load this module through its entry
point, and only building, training and evaluating need torch (scikit-learn only the latter two).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import SuperNetwork
from .space import Config, SearchSpace, Variable

# Bump when a change here alters what training produces: the cache key includes it.
CODE_VERSION = 1

RESOLUTIONS = (8, 12, 16)
KERNELS = (3, 5)
# Stage widths (every block's output) and middle widths (inside a block), as fractions of STAGE_CHANNELS.
WIDTHS = (0.25, 0.5, 0.75, 1.0)
MID_WIDTHS = (0.125, 0.25, 0.5, 1.0)
DEPTHS = (1, 2, 3)
STEM_CHANNELS = 8
STAGE_CHANNELS = (16, 32, 64)
STAGE_STRIDES = (2, 2, 2)
NUM_CLASSES = 10

EPOCHS = 15
BATCH = 64
LEARNING_RATE = 0.1
WEIGHT_DECAY = 5e-5
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0
CALIBRATION_IMAGES = 256
# One thread: layers this small gain little from a second (about 1.35× here), lose far more when the
# machine is busy, and a fixed count keeps training reproducible (a reduction's order can depend on it).
TRAIN_THREADS = 1


def _depth_name(s: int) -> str:
    return f"depth_s{s + 1}"


def _stage_width_name(s: int) -> str:
    return f"width_s{s + 1}"


def _kernel_name(s: int, b: int) -> str:
    return f"kernel_s{s + 1}b{b + 1}"


def _width_name(s: int, b: int) -> str:
    return f"mid_width_s{s + 1}b{b + 1}"


def _variables() -> list[Variable]:
    variables = [Variable("resolution", RESOLUTIONS)]
    for s in range(len(STAGE_CHANNELS)):
        variables.append(Variable(_depth_name(s), DEPTHS))
        variables.append(Variable(_stage_width_name(s), WIDTHS))
        for b in range(max(DEPTHS)):
            variables.append(Variable(_kernel_name(s, b), KERNELS))
            variables.append(Variable(_width_name(s, b), MID_WIDTHS))
    return variables


SPACE = SearchSpace(
    "demo", _variables(),
    description="elastic CNN on scikit-learn's 8×8 digits: input resolution; depth and width per stage; "
                "kernel and middle width per block (a stage's blocks beyond its depth are unused)")


# ----- architecture of one sub-network ---------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """conv k×k (c_in→mid, stride) · BN · ReLU · conv 1×1 (mid→c_out) · BN · (+ input) · ReLU."""
    c_in: int
    mid: int
    c_out: int
    kernel: int
    stride: int
    residual: bool


@dataclass(frozen=True)
class Architecture:
    """What a config builds: only the blocks it uses, so equal architectures compare (and hash) equal."""
    resolution: int
    stages: tuple[tuple[Block, ...], ...]


def architecture(config: Config) -> Architecture:
    config = SPACE.validate(config)
    stages, c_in = [], STEM_CHANNELS
    for s, (c_out, stride) in enumerate(zip(STAGE_CHANNELS, STAGE_STRIDES)):
        blocks = []
        width = max(1, round(config[_stage_width_name(s)] * c_out))
        for b in range(config[_depth_name(s)]):
            mid = max(1, round(config[_width_name(s, b)] * c_out))
            # A stage's first block changes resolution and channels; the others add their input.
            blocks.append(Block(c_in, mid, width, config[_kernel_name(s, b)], stride if b == 0 else 1, b > 0))
            c_in = width
        stages.append(tuple(blocks))
    return Architecture(config["resolution"], tuple(stages))


def _extreme(pick) -> Config:
    return {v.name: pick(v.choices) for v in SPACE.variables}


LARGEST: Config = _extreme(max)
SMALLEST: Config = _extreme(min)


# ----- torch modules (defined on first use, so that importing this module needs no torch) ------------
@functools.cache
def _nn():
    from torch import nn

    class ConvBlock(nn.Module):
        def __init__(self, spec: Block):
            super().__init__()
            self.conv1 = nn.Conv2d(spec.c_in, spec.mid, spec.kernel, spec.stride, spec.kernel // 2, bias=False)
            self.bn1 = nn.BatchNorm2d(spec.mid)
            self.conv2 = nn.Conv2d(spec.mid, spec.c_out, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(spec.c_out)
            self.relu = nn.ReLU()
            self.residual = spec.residual

        def forward(self, x):
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(y + x if self.residual else y)

    class DemoNet(nn.Module):
        """A standalone sub-network: plain layers named as in the super-network, which is the largest one."""

        def __init__(self, arch: Architecture):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, STEM_CHANNELS, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(STEM_CHANNELS), nn.ReLU())
            self.stages = nn.ModuleList(nn.Sequential(*map(ConvBlock, stage)) for stage in arch.stages)
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(arch.stages[-1][-1].c_out, NUM_CLASSES)

        def forward(self, image):
            x = self.stem(image)
            for stage in self.stages:
                x = stage(x)
            return self.head(self.pool(x))

    return DemoNet


def _slice(full, shape):
    """The sub-network's part of a super-network tensor: first channels, centre crop of a conv kernel."""
    index = []
    for dim, (have, want) in enumerate(zip(full.shape, shape)):
        start = (have - want) // 2 if full.dim() == 4 and dim >= 2 else 0
        index.append(slice(start, start + want))
    return full[tuple(index)]


class DemoSuperNetwork(SuperNetwork):
    space = SPACE

    def unused(self, config: Config) -> set[str]:
        """The kernels and middle widths of each stage's blocks beyond its depth."""
        config = SPACE.validate(config)
        return {name(s, b) for s in range(len(STAGE_CHANNELS)) for b in range(config[_depth_name(s)], max(DEPTHS))
                for name in (_kernel_name, _width_name)}

    def build(self, config: Config, weights: Any = None):
        """A standalone module for `config`: random weights, or sliced from the super-network's state dict.

        Batch-norm statistics are the super-network's slices; `calibrate_batchnorm` re-estimates them
        for this sub-network (the evaluator does), which its accuracy needs but its latency does not.
        """
        import torch

        from ._checkpoint import read_weights

        module = _nn()(architecture(config))
        if weights is not None:
            full = read_weights(weights, "demo")  # a state dict, or a file read as tensors alone
            own = module.state_dict()
            for name, t in own.items():
                if name not in full or full[name].dim() != t.dim() or any(
                        h < w for h, w in zip(full[name].shape, t.shape)):
                    found = tuple(full[name].shape) if name in full else "nothing"
                    raise ValueError(f"the weights are not a demo super-network's: {name} needs at least "
                                     f"{tuple(t.shape)}, found {found}")
            with torch.no_grad():
                module.load_state_dict({name: _slice(full[name], t.shape).clone() for name, t in own.items()})
        return module.eval()

    def input_specs(self, config: Config, batch: int = 1) -> list[dict]:
        resolution = SPACE.validate(config)["resolution"]
        return [{"name": "image", "shape": [batch, 1, resolution, resolution], "dtype": "float32"}]


SUPERNET = DemoSuperNetwork()


# ----- data --------------------------------------------------------------------------------------------
@functools.cache
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, validation images, validation labels): a fixed stratified 80/20 split.

    Images are float32 [N, 1, 8, 8] scaled to [0, 1].
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(images, labels, test_size=VALIDATION_FRACTION,
                                                      stratify=labels, random_state=SPLIT_SEED)
    return x_train, y_train, x_val, y_val


def preprocess(images: np.ndarray, resolution: int):
    """8×8 images [N, 1, 8, 8] in [0, 1] → the network's input at `resolution` (bilinear upsampling)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(images, dtype=torch.float32)
    if resolution == x.shape[-1]:
        return x.clone()
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


# ----- training ----------------------------------------------------------------------------------------
def training_settings(seed: int = 0, epochs: int = EPOCHS) -> dict:
    """Everything that determines the trained weights (the cache key hashes it)."""
    return {"code_version": CODE_VERSION, "seed": seed, "epochs": epochs, "batch": BATCH,
            "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "threads": TRAIN_THREADS,
            "split": [VALIDATION_FRACTION, SPLIT_SEED], "space": SPACE.describe(),
            "channels": [STEM_CHANNELS, *STAGE_CHANNELS], "strides": list(STAGE_STRIDES)}


def cache_path(seed: int = 0, epochs: int = EPOCHS, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the trained state dict lives: cache_dir, else $FLEETNAS_CACHE_DIR, else ~/.cache/fleetnas."""
    root = cache_dir or os.environ.get("FLEETNAS_CACHE_DIR") or Path.home() / ".cache" / "fleetnas"
    digest = hashlib.sha256(json.dumps(training_settings(seed, epochs), sort_keys=True).encode()).hexdigest()
    return Path(root) / f"demo-supernet-{digest[:16]}.pt"


def train_supernet(seed: int = 0, epochs: int = EPOCHS, cache_dir: str | os.PathLike | None = None,
                   log=None) -> dict:
    """The trained super-network's state dict, from the cache or trained now (deterministic given `seed`).

    `log`, if given, receives one line per epoch.
    """
    import torch

    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    path = cache_path(seed, epochs, cache_dir)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    state = _train(seed, epochs, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, partial)
    os.replace(partial, path)  # atomic: a concurrent reader sees the whole file or none
    return state


def _train(seed: int, epochs: int, log) -> dict:
    import torch

    with _torch_threads(TRAIN_THREADS):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        x_train, y_train, _, _ = digits_split()
        inputs = {r: preprocess(x_train, r) for r in RESOLUTIONS}
        labels = torch.as_tensor(y_train)
        net = _nn()(architecture(LARGEST)).train()
        tensors = {**dict(net.named_parameters()), **dict(net.named_buffers())}
        steps_per_epoch = -(-len(labels) // BATCH)
        optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE, momentum=0.9, nesterov=True,
                                    weight_decay=WEIGHT_DECAY)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=epochs * steps_per_epoch)
        shuffle = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            started, total = time.perf_counter(), 0.0
            for batch in torch.randperm(len(labels), generator=shuffle).split(BATCH):
                optimizer.zero_grad(set_to_none=True)
                total += _sandwich_step(tensors, inputs, labels, batch, rng)
                optimizer.step()
                schedule.step()
            if log:
                log(f"epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.3f} (sum of the four "
                    f"sub-networks'), {time.perf_counter() - started:.1f} s")
        return {name: t.detach().clone() for name, t in net.state_dict().items()}


def _sandwich_step(tensors: dict, inputs: dict, labels, batch, rng: np.random.Generator) -> float:
    """Accumulates the gradients of the largest, the smallest and two random sub-networks on one batch."""
    import torch.nn.functional as F

    # As in OFA, one resolution per batch: the largest then teaches at every resolution.
    resolution = int(rng.choice(RESOLUTIONS))
    teacher, total = None, 0.0
    for config in (LARGEST, SMALLEST, *SPACE.sample(2, rng)):
        arch = architecture({**config, "resolution": resolution})
        logits = _forward_slices(tensors, arch, inputs[resolution][batch])
        if teacher is None:
            loss = F.cross_entropy(logits, labels[batch])
            teacher = logits.detach().softmax(1)
        else:  # in-place distillation from the largest, mixed with the labels: early on, the teacher is noise
            loss = (F.cross_entropy(logits, teacher) + F.cross_entropy(logits, labels[batch])) / 2
        loss.backward()
        total += loss.item()
    return total


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=4096)
def _skeleton(arch: Architecture):
    """The sub-network's module without storage: its forward runs on the super-network's slices."""
    import torch

    with torch.device("meta"):
        return _nn()(arch).train()


def _forward_slices(tensors: dict, arch: Architecture, x):
    from torch.func import functional_call

    skeleton = _skeleton(arch)
    own = skeleton.state_dict(keep_vars=True)
    return functional_call(skeleton, {name: _slice(tensors[name], t.shape) for name, t in own.items()}, (x,))


# ----- evaluation --------------------------------------------------------------------------------------
def calibrate_batchnorm(module, images) -> None:
    """Re-estimates every batch-norm's statistics from `images` (one batch), as OFA does per sub-network."""
    import torch
    from torch import nn

    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one batch gives exactly that batch's statistics
    module.train()
    with torch.no_grad():
        module(images)
    module.eval()


def evaluate_accuracy(config: Config, state_dict: dict) -> float:
    """Top-1 accuracy (a fraction, 0..1) on the validation split, with weights inherited from `state_dict`."""
    import torch

    arch = architecture(config)
    calibration, validation = _evaluation_inputs(arch.resolution)
    module = SUPERNET.build(config, state_dict)
    with _torch_threads(TRAIN_THREADS):
        calibrate_batchnorm(module, calibration)
        with torch.no_grad():
            predicted = module(validation).argmax(1).numpy()
    return float((predicted == digits_split()[3]).mean())


@functools.cache
def _evaluation_inputs(resolution: int):
    """(batch-norm calibration images from the training split, validation images) at `resolution`."""
    x_train, _, x_val, _ = digits_split()
    return preprocess(x_train[:CALIBRATION_IMAGES], resolution), preprocess(x_val, resolution)


class DemoEvaluator:
    """Validation top-1 accuracy (a fraction, 0..1) of demo sub-networks, memoised per architecture.

    Uses the given super-network state dict, else the cached (or newly trained: about a minute of one
    core; `log` receives its progress) default one.
    """

    metric = "top1"
    objective = "max"

    def __init__(self, state_dict: dict | None = None, *, seed: int = 0, epochs: int = EPOCHS,
                 cache_dir: str | os.PathLike | None = None, log=None):
        if state_dict is None:
            state_dict = train_supernet(seed, epochs, cache_dir, log)
        self.state_dict = state_dict
        self._memo: dict[Architecture, float] = {}

    def __call__(self, config: Config) -> float:
        arch = architecture(config)  # configs differing only in unused blocks share one evaluation
        if arch not in self._memo:
            self._memo[arch] = evaluate_accuracy(config, self.state_dict)
        return self._memo[arch]

    def __len__(self) -> int:
        return len(self._memo)
