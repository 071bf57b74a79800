"""Elastic BERT: sub-networks of BERT-base for sentence classification (DynaBERT-style depth and width).

The space is DyNAS-T's `bert_base_sst2` (IntelLabs/DyNAS-T, dynast/supernetwork/supernetwork_registry.py):
the number of layers {6..12}, and per layer the attention heads {6, 8, 10, 12} and the intermediate (FFN)
size {1024, 2048, 3072}, over BERT-base (hidden 768, 12 layers, 12 heads of 64, FFN 3072). As in DyNAS-T's
BertSupernetwork, a sub-network keeps the first `num_layers` layers, each layer its first heads and first
intermediate units; the hidden size stays 768. Layers beyond `num_layers` keep their variables but are
unused (`architecture` drops them).

The module carries Hugging Face's BertForSequenceClassification parameter names and layout, so a
fine-tuned BERT-base state dict (Hugging Face's, or DyNAS-T's SST-2 super-network) can be given as
`weights=` and is sliced to the sub-network. Inputs: `input_ids` and `attention_mask` (int64,
[batch, sequence_length], 1 = token, 0 = padding); token types are all 0. Output: logits [batch, num_labels].
The default sequence length is 128, the usual length for GLUE/SST-2 fine-tuning and evaluation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from .base import SuperNetwork
from .space import Config, SearchSpace, Variable

SPACE_ID = "bert"
HIDDEN_SIZE = 768
HEAD_DIM = 64
SUPER_LAYERS = 12
SUPER_HEADS = 12
SUPER_INTERMEDIATE_SIZE = 3072
#: bert-base-uncased's WordPiece vocabulary, position table and token types.
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
TYPE_VOCAB_SIZE = 2
LAYER_NORM_EPS = 1e-12
NUM_LABELS = 2  # SST-2
SEQUENCE_LENGTH = 128


def _variables() -> list[Variable]:
    variables = [Variable("num_layers", (6, 7, 8, 9, 10, 11, 12))]
    for i in range(SUPER_LAYERS):
        variables += [Variable(f"num_attention_heads_{i}", (6, 8, 10, 12)),
                      Variable(f"intermediate_size_{i}", (1024, 2048, 3072))]
    return variables


SPACE = SearchSpace(
    SPACE_ID, _variables(),
    description="elastic BERT-base (DyNAS-T bert_base_sst2): number of layers, and per layer attention heads "
                "and intermediate size (layers beyond num_layers are unused)")


@dataclass(frozen=True)
class Layer:
    heads: int
    intermediate_size: int


@dataclass(frozen=True)
class Architecture:
    """What a config builds: only the layers it uses."""
    layers: tuple[Layer, ...]


def architecture(config: Config) -> Architecture:
    config = SPACE.validate(config)
    return Architecture(tuple(Layer(config[f"num_attention_heads_{i}"], config[f"intermediate_size_{i}"])
                              for i in range(config["num_layers"])))


LARGEST: Config = {v.name: max(v.choices) for v in SPACE.variables}
SMALLEST: Config = {v.name: min(v.choices) for v in SPACE.variables}


# ----- torch modules (defined on first use, so that importing this module needs no torch) -------------
@functools.cache
def _nn():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ._transformer import multi_head_attention

    def layer_norm():
        return nn.LayerNorm(HIDDEN_SIZE, eps=LAYER_NORM_EPS)

    class Embeddings(nn.Module):
        def __init__(self, vocab_size: int):
            super().__init__()
            self.word_embeddings = nn.Embedding(vocab_size, HIDDEN_SIZE)
            self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN_SIZE)
            self.token_type_embeddings = nn.Embedding(TYPE_VOCAB_SIZE, HIDDEN_SIZE)
            self.LayerNorm = layer_norm()

        def forward(self, input_ids):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
            return self.LayerNorm(x + self.token_type_embeddings.weight[0])

    class SelfAttention(nn.Module):
        def __init__(self, heads: int):
            super().__init__()
            self.heads = heads
            self.query = nn.Linear(HIDDEN_SIZE, heads * HEAD_DIM)
            self.key = nn.Linear(HIDDEN_SIZE, heads * HEAD_DIM)
            self.value = nn.Linear(HIDDEN_SIZE, heads * HEAD_DIM)

        def forward(self, x, mask):
            return multi_head_attention(self.query(x), self.key(x), self.value(x), self.heads, mask)

    class DenseNorm(nn.Module):
        """Dense, then LayerNorm of (that + the residual): BERT's SelfOutput and Output."""

        def __init__(self, in_features: int):
            super().__init__()
            self.dense = nn.Linear(in_features, HIDDEN_SIZE)
            self.LayerNorm = layer_norm()

        def forward(self, x, residual):
            return self.LayerNorm(self.dense(x) + residual)

    class Attention(nn.Module):
        def __init__(self, heads: int):
            super().__init__()
            self.self = SelfAttention(heads)
            self.output = DenseNorm(heads * HEAD_DIM)

        def forward(self, x, mask):
            return self.output(self.self(x, mask), x)

    class Intermediate(nn.Module):
        def __init__(self, size: int):
            super().__init__()
            self.dense = nn.Linear(HIDDEN_SIZE, size)

        def forward(self, x):
            return F.gelu(self.dense(x))

    class BertLayer(nn.Module):
        def __init__(self, spec: Layer):
            super().__init__()
            self.attention = Attention(spec.heads)
            self.intermediate = Intermediate(spec.intermediate_size)
            self.output = DenseNorm(spec.intermediate_size)

        def forward(self, x, mask):
            x = self.attention(x, mask)
            return self.output(self.intermediate(x), x)

    class Encoder(nn.Module):
        def __init__(self, arch: Architecture):
            super().__init__()
            self.layer = nn.ModuleList(BertLayer(spec) for spec in arch.layers)

        def forward(self, x, mask):
            for layer in self.layer:
                x = layer(x, mask)
            return x

    class Pooler(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE)

        def forward(self, x):
            return torch.tanh(self.dense(x[:, 0]))

    class Bert(nn.Module):
        def __init__(self, arch: Architecture, vocab_size: int):
            super().__init__()
            self.embeddings = Embeddings(vocab_size)
            self.encoder = Encoder(arch)
            self.pooler = Pooler()

        def forward(self, input_ids, attention_mask):
            # Hugging Face's extended mask: 0 where attended, the dtype's minimum at padding.
            mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
            return self.pooler(self.encoder(self.embeddings(input_ids), mask))

    class ElasticBert(nn.Module):
        """input_ids, attention_mask [B, S] (int64) → logits [B, num_labels]."""

        def __init__(self, arch: Architecture, vocab_size: int, num_labels: int):
            super().__init__()
            self.bert = Bert(arch, vocab_size)
            self.classifier = nn.Linear(HIDDEN_SIZE, num_labels)

        def init_weights(self):
            # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms.
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(module.weight, 0.0, 0.02)
                if isinstance(module, nn.Linear):
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    module.reset_parameters()

        def forward(self, input_ids, attention_mask):
            return self.classifier(self.bert(input_ids, attention_mask))

    return ElasticBert


class ElasticBertSuperNetwork(SuperNetwork):
    """BERT-base for SST-2 as DyNAS-T's elastic super-network; sizes default to bert-base-uncased's."""

    space = SPACE

    def __init__(self, *, vocab_size: int = VOCAB_SIZE, sequence_length: int = SEQUENCE_LENGTH,
                 num_labels: int = NUM_LABELS):
        for name, value in (("vocab_size", vocab_size), ("sequence_length", sequence_length),
                            ("num_labels", num_labels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if sequence_length > MAX_POSITIONS:
            raise ValueError(f"sequence_length must be at most BERT's {MAX_POSITIONS} positions, got {sequence_length}")
        self.vocab_size, self.sequence_length, self.num_labels = vocab_size, sequence_length, num_labels

    def architecture(self, config: Config) -> Architecture:
        return architecture(config)

    def unused(self, config: Config) -> set[str]:
        """The heads and intermediate sizes of the layers beyond num_layers."""
        return {f"{key}_{i}" for i in range(SPACE.validate(config)["num_layers"], SUPER_LAYERS)
                for key in ("num_attention_heads", "intermediate_size")}

    def build(self, config: Config, weights: Any = None, *, seed: int = 0):
        """A standalone sub-network: random weights (seeded), or sliced from a BERT-base state dict or
        checkpoint file with Hugging Face's BertForSequenceClassification names."""
        from ._transformer import build_module, check_fixed_sizes

        arch = architecture(config)

        def prepare(module, state: dict) -> dict:
            check_fixed_sizes(state, SPACE_ID, {
                "bert.embeddings.word_embeddings.weight": (0, self.vocab_size, "build it with vocab_size to match the weights"),
                "classifier.weight": (0, self.num_labels, "build it with num_labels to match the weights")})
            return state

        return build_module(lambda: _nn()(arch, self.vocab_size, self.num_labels), weights, SPACE_ID, seed, prepare)

    def input_specs(self, config: Config, batch: int = 1) -> list[dict]:
        SPACE.validate(config)
        shape = [batch, self.sequence_length]
        return [{"name": "input_ids", "shape": shape, "dtype": "int64"},
                {"name": "attention_mask", "shape": shape, "dtype": "int64"}]

    def supernet_state_dict(self, seed: int = 0) -> dict:
        """The super-network's state dict (random weights, seeded) in the layout `build(weights=...)` slices."""
        return self.build(LARGEST, seed=seed).state_dict()


SUPERNET = ElasticBertSuperNetwork()
