"""HAT: the SubTransformer space of Hardware-Aware Transformers on WMT'14 En-De (Wang et al., ACL 2020).

The space is HAT's `configs/wmt14.en-de/supertransformer/space0.yml` (mit-han-lab/hardware-aware-transformers):
encoder and decoder embedding dims {512, 640}; 6 encoder layers (fixed); 1..6 decoder layers; per layer an
FFN dim {1024, 2048, 3072} and self-attention heads {4, 8}; per decoder layer encoder-decoder attention
heads {4, 8} and the "arbitrary encoder-decoder attention" {-1, 1, 2}: attend to the last encoder layer's
output (-1), or to it concatenated along time with the one (1) or two (2) layers before it.

HAT sampled its published latency datasets (the `wmt14ende_*.csv` files) from a wider space,
`configs/wmt14.en-de/latency_dataset/*.yml`: FFN dims also 512, heads also 2. `LATENCY_DATASET_SPACE`
is that space; `hat_features` accepts its configs, so the datasets' rows can be reproduced exactly.

Every decoder layer has its variables even when `decoder_layer_num` leaves it unused, as in HAT's own
evolutionary search; `architecture(config)` keeps only what is used (configs that differ only in unused
layers build the same module).

The SuperTransformer (fairseq `transformer_wmt_en_de` with HAT's super layers): embed 640, FFN 3072,
6 + 6 layers, q/k/v width 512 whatever the embed dim (`qkv-dim: 512`), so a layer's head count changes its
head size (512/heads) and not its weights; post-norm, ReLU, sinusoidal positions (the 640-wide table,
sliced), and one embedding table shared by encoder, decoder and output projection (share-all-embeddings),
of which each side uses its first columns.

What a built module computes, and how HAT timed it: HAT (latency_dataset.py) times the encoder on one
30-token sentence, and the decoder as 30 incremental steps over 5 beams with cached keys and values.
The module here takes `src_tokens` [batch, 30] and `prev_output_tokens` [batch·5, 30] (int64), runs the
encoder once and the decoder once over the whole 30-token prefix under a causal mask, and returns the
logits [batch·5, 30, vocab]. That is the same matrix work as HAT's 30 steps done in one pass, without
the per-step overhead that dominates small-batch decoding on a CPU: its latency tracks HAT's
encoder + decoder latency in rank, not in absolute value. Tokens are taken as unpadded (HAT's dummy
sentences have no padding), so no padding masks are computed.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import SuperNetwork
from .space import Config, InvalidConfig, SearchSpace, Variable

SPACE_ID = "hat"
SUPER_EMBED_DIM = 640
SUPER_FFN_DIM = 3072
SUPER_ENCODER_LAYERS = 6
SUPER_DECODER_LAYERS = 6
QKV_DIM = 512
#: fairseq's joined BPE dictionary for WMT'14 En-De, as HAT prepares it (preprocess.py --nwordssrc 32768).
WMT14_VOCAB_SIZE = 32768
PAD_INDEX = 1  # fairseq's <pad>; positions count from PAD_INDEX + 1
#: HAT's dummy sentence length and decoder steps for WMT (latency_dataset.py), and fairseq's default beam.
SOURCE_LENGTH = 30
TARGET_LENGTH = 30
BEAM = 5

#: The ten features of HAT's latency predictor and of its latency datasets, in their column order.
FEATURE_NAMES = (
    "encoder_embed_dim", "encoder_layer_num", "encoder_ffn_embed_dim_avg", "encoder_self_attention_heads_avg",
    "decoder_embed_dim", "decoder_layer_num", "decoder_ffn_embed_dim_avg", "decoder_self_attention_heads_avg",
    "decoder_ende_attention_heads_avg", "decoder_arbitrary_ende_attn_avg",
)

ENCODER_LAYER_KEYS = ("encoder_ffn_embed_dim", "encoder_self_attention_heads")
DECODER_LAYER_KEYS = ("decoder_ffn_embed_dim", "decoder_self_attention_heads", "decoder_ende_attention_heads",
                      "decoder_arbitrary_ende_attn")


def _variables(ffn_dims: tuple, heads: tuple) -> list[Variable]:
    variables = [Variable("encoder_embed_dim", (512, 640)), Variable("encoder_layer_num", (6,)),
                 Variable("decoder_embed_dim", (512, 640)), Variable("decoder_layer_num", (1, 2, 3, 4, 5, 6))]
    for i in range(SUPER_ENCODER_LAYERS):
        variables += [Variable(f"encoder_ffn_embed_dim_{i}", ffn_dims),
                      Variable(f"encoder_self_attention_heads_{i}", heads)]
    for i in range(SUPER_DECODER_LAYERS):
        variables += [Variable(f"decoder_ffn_embed_dim_{i}", ffn_dims),
                      Variable(f"decoder_self_attention_heads_{i}", heads),
                      Variable(f"decoder_ende_attention_heads_{i}", heads),
                      Variable(f"decoder_arbitrary_ende_attn_{i}", (-1, 1, 2))]
    return variables


# Choices are listed smallest first, as in FleetNAS's other spaces (HAT's configs list them largest first):
# index 0 of every variable is then the cheapest sub-network.
SPACE = SearchSpace(
    SPACE_ID, _variables((1024, 2048, 3072), (4, 8)),
    description="HAT SubTransformers for WMT'14 En-De (space0): embed dims, decoder depth, and per layer FFN dim, "
                "attention heads and arbitrary encoder-decoder attention (decoder layers beyond "
                "decoder_layer_num are unused)")
LATENCY_DATASET_SPACE = SearchSpace(
    "hat_latency_dataset", _variables((512, 1024, 2048, 3072), (2, 4, 8)),
    description="the wider space HAT sampled its WMT'14 En-De latency datasets from (FFN dims also 512, heads also 2)")


# ----- HAT's nested config format ---------------------------------------------------------------------
def to_hat_config(config: Config) -> dict:
    """The config in HAT's nested form ({"encoder": {..., lists per layer}, "decoder": {...}})."""
    config = LATENCY_DATASET_SPACE.validate(config)
    encoder = {"encoder_embed_dim": config["encoder_embed_dim"], "encoder_layer_num": config["encoder_layer_num"]}
    encoder.update({key: [config[f"{key}_{i}"] for i in range(SUPER_ENCODER_LAYERS)] for key in ENCODER_LAYER_KEYS})
    decoder = {"decoder_embed_dim": config["decoder_embed_dim"], "decoder_layer_num": config["decoder_layer_num"]}
    decoder.update({key: [config[f"{key}_{i}"] for i in range(SUPER_DECODER_LAYERS)] for key in DECODER_LAYER_KEYS})
    return {"encoder": encoder, "decoder": decoder}


def from_hat_config(nested: dict, space: SearchSpace = SPACE) -> Config:
    """A flat config from HAT's nested form, e.g. a SubTransformer's yml or `utils.sample_configs` output.

    Lists shorter than 6 (HAT lists only the used decoder layers' FFN dims and heads) are padded with
    the last value, which only fills unused layers.
    """
    try:
        encoder, decoder = nested["encoder"], nested["decoder"]
        flat = {key: part[key] for part, key in ((encoder, "encoder_embed_dim"), (encoder, "encoder_layer_num"),
                                                 (decoder, "decoder_embed_dim"), (decoder, "decoder_layer_num"))}
        for part, keys, layers in ((encoder, ENCODER_LAYER_KEYS, SUPER_ENCODER_LAYERS),
                                   (decoder, DECODER_LAYER_KEYS, SUPER_DECODER_LAYERS)):
            for key in keys:
                values = list(part[key])
                if not values or len(values) > layers:
                    raise InvalidConfig(f"HAT config: {key} lists {len(values)} values; 1 to {layers} expected")
                values += values[-1:] * (layers - len(values))
                flat.update({f"{key}_{i}": v for i, v in enumerate(values)})
    except (KeyError, TypeError) as exc:
        raise InvalidConfig(f"not a HAT config: it lacks {exc}") from None
    return space.validate(flat)


# ----- features ---------------------------------------------------------------------------------------
def hat_features(config: Config) -> dict[str, float]:
    """HAT's ten latency-predictor features (utils.get_config_features), as floats keyed by FEATURE_NAMES.

    Per-layer values are averaged over the used layers only (the first `*_layer_num`); the arbitrary
    encoder-decoder attention averages the number of encoder layers attended (-1, 1, 2 count as 1, 2, 3).
    Accepts configs of SPACE and of the wider LATENCY_DATASET_SPACE.
    """
    config = LATENCY_DATASET_SPACE.validate(config)
    n_enc, n_dec = config["encoder_layer_num"], config["decoder_layer_num"]

    def mean(key: str, layers: int, transform=lambda v: v) -> float:
        return float(np.mean([transform(config[f"{key}_{i}"]) for i in range(layers)]))

    values = (
        config["encoder_embed_dim"], n_enc,
        mean("encoder_ffn_embed_dim", n_enc), mean("encoder_self_attention_heads", n_enc),
        config["decoder_embed_dim"], n_dec,
        mean("decoder_ffn_embed_dim", n_dec), mean("decoder_self_attention_heads", n_dec),
        mean("decoder_ende_attention_heads", n_dec),
        mean("decoder_arbitrary_ende_attn", n_dec, _attended_encoder_layers),
    )
    return {name: float(v) for name, v in zip(FEATURE_NAMES, values)}


def _attended_encoder_layers(arbitrary_ende_attn: int) -> int:
    return {-1: 1, 1: 2, 2: 3}[arbitrary_ende_attn]


# ----- architecture of one SubTransformer -------------------------------------------------------------
@dataclass(frozen=True)
class EncoderLayer:
    ffn_dim: int
    heads: int


@dataclass(frozen=True)
class DecoderLayer:
    ffn_dim: int
    self_heads: int
    ende_heads: int
    encoder_layers_attended: int  # 1, 2 or 3: the last encoder layers whose outputs it attends to


@dataclass(frozen=True)
class Architecture:
    """What a config builds: only the layers it uses, so equal architectures compare (and hash) equal."""
    encoder_embed_dim: int
    decoder_embed_dim: int
    encoder: tuple[EncoderLayer, ...]
    decoder: tuple[DecoderLayer, ...]


def architecture(config: Config, space: SearchSpace = SPACE) -> Architecture:
    config = space.validate(config)
    encoder = tuple(EncoderLayer(config[f"encoder_ffn_embed_dim_{i}"], config[f"encoder_self_attention_heads_{i}"])
                    for i in range(config["encoder_layer_num"]))
    decoder = tuple(DecoderLayer(config[f"decoder_ffn_embed_dim_{i}"], config[f"decoder_self_attention_heads_{i}"],
                                 config[f"decoder_ende_attention_heads_{i}"],
                                 _attended_encoder_layers(config[f"decoder_arbitrary_ende_attn_{i}"]))
                    for i in range(config["decoder_layer_num"]))
    return Architecture(config["encoder_embed_dim"], config["decoder_embed_dim"], encoder, decoder)


def _extreme(space: SearchSpace, pick) -> Config:
    return {v.name: pick(v.choices) for v in space.variables}


LARGEST: Config = _extreme(SPACE, max)
SMALLEST: Config = _extreme(SPACE, min)


# ----- torch modules (defined on first use, so that importing this module needs no torch) -------------
@functools.cache
def _nn():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ._transformer import causal_mask, multi_head_attention

    class Attention(nn.Module):
        """fairseq's MultiheadAttention with HAT's fixed q/k/v width (heads only split it)."""

        def __init__(self, query_dim: int, key_dim: int, heads: int):
            super().__init__()
            self.heads = heads
            self.q_proj = nn.Linear(query_dim, QKV_DIM)
            self.k_proj = nn.Linear(key_dim, QKV_DIM)
            self.v_proj = nn.Linear(key_dim, QKV_DIM)
            self.out_proj = nn.Linear(QKV_DIM, query_dim)

        def forward(self, query, key, mask=None):
            out = multi_head_attention(self.q_proj(query), self.k_proj(key), self.v_proj(key), self.heads, mask)
            return self.out_proj(out)

    class TransformerEncoderLayer(nn.Module):
        def __init__(self, dim: int, spec: EncoderLayer):
            super().__init__()
            self.self_attn = Attention(dim, dim, spec.heads)
            self.self_attn_layer_norm = nn.LayerNorm(dim)
            self.fc1 = nn.Linear(dim, spec.ffn_dim)
            self.fc2 = nn.Linear(spec.ffn_dim, dim)
            self.final_layer_norm = nn.LayerNorm(dim)

        def forward(self, x):
            x = self.self_attn_layer_norm(x + self.self_attn(x, x))
            return self.final_layer_norm(x + self.fc2(F.relu(self.fc1(x))))

    class TransformerDecoderLayer(nn.Module):
        def __init__(self, dim: int, encoder_dim: int, spec: DecoderLayer):
            super().__init__()
            self.encoder_layers_attended = spec.encoder_layers_attended
            self.self_attn = Attention(dim, dim, spec.self_heads)
            self.self_attn_layer_norm = nn.LayerNorm(dim)
            self.encoder_attn = Attention(dim, encoder_dim, spec.ende_heads)
            self.encoder_attn_layer_norm = nn.LayerNorm(dim)
            self.fc1 = nn.Linear(dim, spec.ffn_dim)
            self.fc2 = nn.Linear(spec.ffn_dim, dim)
            self.final_layer_norm = nn.LayerNorm(dim)

        def forward(self, x, memory, mask):
            x = self.self_attn_layer_norm(x + self.self_attn(x, x, mask))
            x = self.encoder_attn_layer_norm(x + self.encoder_attn(x, memory))
            return self.final_layer_norm(x + self.fc2(F.relu(self.fc1(x))))

    class HatTransformer(nn.Module):
        """A standalone SubTransformer: src_tokens [B, S] and prev_output_tokens [B·beam, T] → logits
        [B·beam, T, vocab]."""

        def __init__(self, arch: Architecture, vocab_size: int, beam: int):
            super().__init__()
            self.arch, self.beam = arch, beam
            # One table for encoder, decoder and output projection (share-all-embeddings); each side uses its
            # first columns, as HAT's EmbeddingSuper does. It is stored as the decoder's columns plus, when
            # the encoder is wider, the encoder's further columns, so that no side slices a constant: an
            # exporter or runtime would fold such a slice into a second copy of the table.
            self.embed_tokens = nn.Embedding(vocab_size, arch.decoder_embed_dim)
            extra = arch.encoder_embed_dim - arch.decoder_embed_dim
            self.encoder_embed_extra = nn.Parameter(torch.empty(vocab_size, extra)) if extra > 0 else None
            self.encoder_layers = nn.ModuleList(
                TransformerEncoderLayer(arch.encoder_embed_dim, s) for s in arch.encoder)
            self.decoder_layers = nn.ModuleList(
                TransformerDecoderLayer(arch.decoder_embed_dim, arch.encoder_embed_dim, s) for s in arch.decoder)

        def init_weights(self):
            # fairseq's initialisation: embeddings N(0, dim^-1/2), linear layers Xavier-uniform, zero biases.
            width = max(self.arch.encoder_embed_dim, self.arch.decoder_embed_dim)
            nn.init.normal_(self.embed_tokens.weight, 0.0, width ** -0.5)
            if self.encoder_embed_extra is not None:
                nn.init.normal_(self.encoder_embed_extra, 0.0, width ** -0.5)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    module.reset_parameters()

        def embed(self, tokens, dim: int):
            x = self.embed_tokens(tokens)
            if dim > self.arch.decoder_embed_dim:  # the encoder, wider than the decoder
                x = torch.cat([x, F.embedding(tokens, self.encoder_embed_extra)], dim=-1)
            x = x[..., :dim] * math.sqrt(dim)
            # fairseq's sinusoidal positions, counted from PAD_INDEX + 1, with the SuperTransformer's 640-wide
            # frequencies: a sub-network uses the first columns of the super-network's table, as HAT does.
            half = SUPER_EMBED_DIM // 2
            frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=tokens.device)
                                    * -(math.log(10000.0) / (half - 1)))
            positions = torch.arange(tokens.shape[1], dtype=torch.float32, device=tokens.device) + (PAD_INDEX + 1)
            angles = positions[:, None] * frequencies[None, :]
            return x + torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)[:, :dim]

        def forward(self, src_tokens, prev_output_tokens):
            x = self.embed(src_tokens, self.arch.encoder_embed_dim)
            encoder_states = []
            for layer in self.encoder_layers:
                x = layer(x)
                encoder_states.append(x)
            # Each source sentence serves its `beam` hypotheses (fairseq's reorder_encoder_out).
            batch, source_len, width = x.shape
            encoder_states = [s.unsqueeze(1).expand(batch, self.beam, source_len, width).reshape(-1, source_len, width)
                              for s in encoder_states]
            # Arbitrary encoder-decoder attention: the last output, then the ones before it, along time.
            memories = {k: torch.cat(encoder_states[::-1][:k], dim=1)
                        for k in {s.encoder_layers_attended for s in self.arch.decoder}}

            y = self.embed(prev_output_tokens, self.arch.decoder_embed_dim)
            mask = causal_mask(prev_output_tokens)
            for layer in self.decoder_layers:
                y = layer(y, memories[layer.encoder_layers_attended], mask)
            # Output projection with the shared table, written so that exporters emit Gemm(transB=1) reading
            # the table itself (2-D features and a bias, here zero): a bias-free linear becomes MatMul with a
            # transposed copy of the table folded into the file, which would count its memory twice.
            batch, target_len, width = y.shape
            table = self.embed_tokens.weight
            logits = F.linear(y.reshape(batch * target_len, width), table, table.new_zeros(table.shape[0]))
            return logits.reshape(batch, target_len, -1)

    return HatTransformer


def split_fused_projections(state: dict) -> dict:
    """A HAT/fairseq state dict with each fused `in_proj_weight`/`in_proj_bias` split into q/k/v_proj,
    `encoder.embed_tokens` renamed `embed_tokens` and the layer lists flattened, i.e. this module's names.

    HAT's released SuperTransformer checkpoints use fairseq's names; this lets `build(weights=...)`
    take their state dict (checkpoint["model"]) directly.
    """
    out = {}
    for name, tensor in state.items():
        name = name.replace("encoder.layers.", "encoder_layers.").replace("decoder.layers.", "decoder_layers.")
        if name == "encoder.embed_tokens.weight":
            name = "embed_tokens.weight"
        for fused, suffix in (("in_proj_weight", "weight"), ("in_proj_bias", "bias")):
            if name.endswith(fused):
                prefix = name[: -len(fused)]
                for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                    out[f"{prefix}{part}.{suffix}"] = chunk
                break
        else:
            out[name] = tensor
    return out


class HatSuperNetwork(SuperNetwork):
    """HAT's SuperTransformer for WMT'14 En-De; `vocab_size`, lengths and beam default to HAT's own."""

    def __init__(self, space: SearchSpace = SPACE, *, vocab_size: int = WMT14_VOCAB_SIZE,
                 source_length: int = SOURCE_LENGTH, target_length: int = TARGET_LENGTH, beam: int = BEAM):
        for name, value in (("vocab_size", vocab_size), ("source_length", source_length),
                            ("target_length", target_length), ("beam", beam)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if vocab_size <= PAD_INDEX + 1:
            raise ValueError(f"vocab_size must exceed {PAD_INDEX + 1} (fairseq's special tokens), got {vocab_size}")
        self.space = space
        self.vocab_size, self.beam = vocab_size, beam
        self.source_length, self.target_length = source_length, target_length

    def architecture(self, config: Config) -> Architecture:
        return architecture(config, self.space)

    def unused(self, config: Config) -> set[str]:
        """The per-layer choices of the encoder and decoder layers beyond encoder_ and decoder_layer_num."""
        config = self.space.validate(config)
        return ({f"{key}_{i}" for i in range(config["encoder_layer_num"], SUPER_ENCODER_LAYERS)
                 for key in ENCODER_LAYER_KEYS}
                | {f"{key}_{i}" for i in range(config["decoder_layer_num"], SUPER_DECODER_LAYERS)
                   for key in DECODER_LAYER_KEYS})

    def build(self, config: Config, weights: Any = None, *, seed: int = 0):
        """A standalone SubTransformer: random weights (seeded), or sliced from a SuperTransformer's state
        dict or checkpoint file (this module's names, or HAT's fairseq names)."""
        from ._transformer import build_module, check_fixed_sizes

        arch = self.architecture(config)

        def prepare(module, state: dict) -> dict:
            if any(k.endswith("in_proj_weight") for k in state):
                state = split_fused_projections(state)
            check_fixed_sizes(state, SPACE_ID, {"embed_tokens.weight": (0, self.vocab_size, "build it with vocab_size to match the weights")})
            if module.encoder_embed_extra is not None and "embed_tokens.weight" in state:
                # The encoder's columns beyond the decoder's: not a leading corner, so taken here.
                state = {**state, "encoder_embed_extra":
                         state["embed_tokens.weight"][:, arch.decoder_embed_dim:arch.encoder_embed_dim]}
            return state

        return build_module(lambda: _nn()(arch, self.vocab_size, self.beam), weights, SPACE_ID, seed, prepare)

    def predictor_features(self, config: Config) -> dict[str, float]:
        """HAT's own ten averaged features, which its latency predictor is fitted on."""
        return hat_features(config)

    def input_specs(self, config: Config, batch: int = 1) -> list[dict]:
        self.space.validate(config)
        return [{"name": "src_tokens", "shape": [batch, self.source_length], "dtype": "int64"},
                {"name": "prev_output_tokens", "shape": [batch * self.beam, self.target_length], "dtype": "int64"}]

    def supernet_state_dict(self, seed: int = 0) -> dict:
        """A SuperTransformer state dict (random weights, seeded) in the layout `build(weights=...)` slices."""
        return self.build(_extreme(self.space, max), seed=seed).state_dict()


SUPERNET = HatSuperNetwork()
