"""Elastic ViT: sub-networks of AutoFormer's tiny super-network for ImageNet classification.

The space is AutoFormer-T's (Chen et al., "AutoFormer: Searching Transformers for Visual Recognition",
ICCV 2021, Table 1; microsoft/Cream AutoFormer): embedding dim {192, 216, 240}, depth {12, 13, 14}, and per
layer the attention heads {3, 4} and MLP ratio {3.5, 4.0}. As in AutoFormer, heads are 64 wide whatever
the embedding dim (q/k/v width = heads × 64), a layer's MLP width is int(embed_dim × mlp_ratio), and a
sub-network takes the first layers, first heads and first channels of the super-network, which here is
the largest sub-network (embed 240, depth 14, 4 heads, MLP ratio 4). Layers beyond `depth` keep their
variables but are unused.

The network is a pre-norm ViT with a class token and learned absolute positions: 16×16 patches of a
224×224 RGB image (196 patches + the class token), GELU, 1000 classes. `image_size` may be made smaller
(a multiple of the patch size) for quick tests; the super-network's position table then has fewer
rows, and checkpoints must come from a super-network of the same image size. Input: `image` float32
[batch, 3, image_size, image_size]; output: logits [batch, num_classes]. The parameter layout is
FleetNAS's own (separate q/k/v projections), not AutoFormer's fused qkv.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from .base import SuperNetwork
from .space import Config, SearchSpace, Variable

SPACE_ID = "vit"
HEAD_DIM = 64
SUPER_EMBED_DIM = 240
SUPER_DEPTH = 14
SUPER_HEADS = 4
SUPER_MLP_RATIO = 4.0
IMAGE_SIZE = 224
PATCH_SIZE = 16
IN_CHANNELS = 3
NUM_CLASSES = 1000


def _variables() -> list[Variable]:
    variables = [Variable("embed_dim", (192, 216, 240)), Variable("depth", (12, 13, 14))]
    for i in range(SUPER_DEPTH):
        variables += [Variable(f"num_heads_{i}", (3, 4)), Variable(f"mlp_ratio_{i}", (3.5, 4.0))]
    return variables


SPACE = SearchSpace(
    SPACE_ID, _variables(),
    description="elastic ViT (AutoFormer-T): embedding dim, depth, and per layer attention heads and MLP ratio "
                "(layers beyond depth are unused)")


@dataclass(frozen=True)
class Block:
    heads: int
    mlp_dim: int


@dataclass(frozen=True)
class Architecture:
    """What a config builds: only the blocks it uses."""
    embed_dim: int
    blocks: tuple[Block, ...]


def architecture(config: Config) -> Architecture:
    config = SPACE.validate(config)
    dim = config["embed_dim"]
    return Architecture(dim, tuple(Block(config[f"num_heads_{i}"], int(dim * config[f"mlp_ratio_{i}"]))
                                   for i in range(config["depth"])))


LARGEST: Config = {v.name: max(v.choices) for v in SPACE.variables}
SMALLEST: Config = {v.name: min(v.choices) for v in SPACE.variables}


# ----- torch modules (defined on first use, so that importing this module needs no torch) -------------
@functools.cache
def _nn():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ._transformer import multi_head_attention

    class Attention(nn.Module):
        def __init__(self, dim: int, heads: int):
            super().__init__()
            self.heads = heads
            self.q = nn.Linear(dim, heads * HEAD_DIM)
            self.k = nn.Linear(dim, heads * HEAD_DIM)
            self.v = nn.Linear(dim, heads * HEAD_DIM)
            self.proj = nn.Linear(heads * HEAD_DIM, dim)

        def forward(self, x):
            return self.proj(multi_head_attention(self.q(x), self.k(x), self.v(x), self.heads))

    class TransformerEncoderLayer(nn.Module):
        def __init__(self, dim: int, spec: Block):
            super().__init__()
            self.attn_layer_norm = nn.LayerNorm(dim)
            self.attn = Attention(dim, spec.heads)
            self.ffn_layer_norm = nn.LayerNorm(dim)
            self.fc1 = nn.Linear(dim, spec.mlp_dim)
            self.fc2 = nn.Linear(spec.mlp_dim, dim)

        def forward(self, x):
            x = x + self.attn(self.attn_layer_norm(x))
            return x + self.fc2(F.gelu(self.fc1(self.ffn_layer_norm(x))))

    class ElasticViT(nn.Module):
        """image [B, 3, H, W] → logits [B, num_classes]."""

        def __init__(self, arch: Architecture, image_size: int, num_classes: int):
            super().__init__()
            dim = arch.embed_dim
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv2d(IN_CHANNELS, dim, PATCH_SIZE, PATCH_SIZE)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // PATCH_SIZE) ** 2 + 1, dim))
            self.blocks = nn.ModuleList(TransformerEncoderLayer(dim, spec) for spec in arch.blocks)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, num_classes)

        def init_weights(self):
            # AutoFormer's (timm's) initialisation: truncated N(0, 0.02), zero biases, unit LayerNorms,
            # torch's default for the patch convolution.
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, (nn.LayerNorm, nn.Conv2d)):
                    module.reset_parameters()

        def forward(self, image):
            x = self.patch_embed.proj(image).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x)[:, 0])

    return ElasticViT


class ElasticViTSuperNetwork(SuperNetwork):
    """AutoFormer-T as an elastic super-network; `image_size` defaults to 224."""

    space = SPACE

    def __init__(self, *, image_size: int = IMAGE_SIZE, num_classes: int = NUM_CLASSES):
        for name, value in (("image_size", image_size), ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if image_size % PATCH_SIZE:
            raise ValueError(f"image_size must be a multiple of the {PATCH_SIZE}-pixel patch, got {image_size}")
        self.image_size, self.num_classes = image_size, num_classes

    def architecture(self, config: Config) -> Architecture:
        return architecture(config)

    def unused(self, config: Config) -> set[str]:
        """The heads and MLP ratios of the blocks beyond depth."""
        return {f"{key}_{i}" for i in range(SPACE.validate(config)["depth"], SUPER_DEPTH)
                for key in ("num_heads", "mlp_ratio")}

    def build(self, config: Config, weights: Any = None, *, seed: int = 0):
        """A standalone sub-network: random weights (seeded), or sliced from a super-network state dict or
        checkpoint file of this layout and image size."""
        from ._transformer import build_module, check_fixed_sizes

        arch = architecture(config)

        def prepare(module, state: dict) -> dict:
            check_fixed_sizes(state, SPACE_ID, {
                "pos_embed": (1, module.pos_embed.shape[1], "build it with the image_size to match the weights"),
                "head.weight": (0, self.num_classes, "build it with num_classes to match the weights"),
                # Patches are 16×16 pixels of 3 channels in every sub-network: weights for other patches
                # would be cut to their corner, not refused.
                "patch_embed.proj.weight": ((1, 2, 3), (IN_CHANNELS, PATCH_SIZE, PATCH_SIZE),
                                            f"{SPACE_ID} takes {PATCH_SIZE}×{PATCH_SIZE} patches of "
                                            f"{IN_CHANNELS}-channel images")})
            return state

        return build_module(lambda: _nn()(arch, self.image_size, self.num_classes), weights, SPACE_ID, seed, prepare)

    def input_specs(self, config: Config, batch: int = 1) -> list[dict]:
        SPACE.validate(config)
        return [{"name": "image", "shape": [batch, IN_CHANNELS, self.image_size, self.image_size], "dtype": "float32"}]

    def supernet_state_dict(self, seed: int = 0) -> dict:
        """The super-network's state dict (random weights, seeded) in the layout `build(weights=...)` slices."""
        return self.build(LARGEST, seed=seed).state_dict()


SUPERNET = ElasticViTSuperNetwork()
