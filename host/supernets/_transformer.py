"""Torch pieces shared by the transformer super-networks (hat.py, elastic_bert.py, elastic_vit.py).

Imported only by their builders, so that loading a space needs no torch. The three follow one rule for
weight sharing, as HAT, DynaBERT/DyNAS-T and AutoFormer do: a sub-network's tensor is the leading corner
of the super-network tensor of the same name (its first layers, first heads, first channels).
`slice_state_dict` relies on that rule and nothing else.

Attention is written as plain matmul + softmax rather than scaled_dot_product_attention: it exports to
the same few ONNX operators under every opset and exporter, and ONNX Runtime runs them everywhere.
"""
from __future__ import annotations

import contextlib

import torch

from ._checkpoint import read_weights


def multi_head_attention(q, k, v, heads: int, mask=None):
    """softmax(q·kᵀ/√d + mask)·v per head: q [B, Tq, heads·d], k and v [B, Tk, heads·d] → [B, Tq, heads·d].

    `mask` is additive and broadcasts to [B, heads, Tq, Tk] (0 where allowed, a large negative elsewhere).
    """
    batch, q_len = q.shape[0], q.shape[1]
    k_len = k.shape[1]
    head_dim = q.shape[-1] // heads
    q = q.reshape(batch, q_len, heads, head_dim).transpose(1, 2)
    k = k.reshape(batch, k_len, heads, head_dim).transpose(1, 2)
    v = v.reshape(batch, k_len, heads, head_dim).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (head_dim ** -0.5)
    if mask is not None:
        scores = scores + mask
    out = torch.matmul(scores.softmax(dim=-1), v)
    return out.transpose(1, 2).reshape(batch, q_len, heads * head_dim)


def causal_mask(length_like, dtype=torch.float32):
    """Additive [T, T] mask hiding later positions; T is taken from `length_like`'s second dimension.

    Built from comparisons rather than triu so that it exports as a few elementwise ops with a dynamic
    T. A finite minimum instead of -inf keeps a fully masked row finite.
    """
    positions = torch.arange(length_like.shape[1], device=length_like.device)
    future = positions[None, :] > positions[:, None]
    return future.to(dtype) * torch.finfo(dtype).min


def slice_state_dict(module, full: dict, owner: str) -> dict:
    """`module`'s state dict with every tensor taken as the leading corner of `full`'s tensor of that name."""
    sliced = {}
    for name, own in module.state_dict().items():
        big = full.get(name)
        if big is None:
            raise ValueError(f"the weights are not a {owner} super-network's: they lack {name!r}")
        if not torch.is_tensor(big) or big.dim() != own.dim() or any(b < s for b, s in zip(big.shape, own.shape)):
            shape = tuple(big.shape) if torch.is_tensor(big) else type(big).__name__
            raise ValueError(f"{owner} weights: {name!r} is {shape}, which cannot hold this sub-network's "
                             f"{tuple(own.shape)}")
        sliced[name] = big[tuple(slice(0, n) for n in own.shape)].to(own.dtype).clone()
    return sliced


def check_fixed_sizes(state: dict, owner: str, fixed: dict) -> None:
    """Sizes that are not elastic (a vocabulary, the classes, a patch) must match: slicing them would load a
    wrong model silently. `fixed` maps a tensor name to (dimension, expected size, what fixes that size), or to
    (dimensions, expected sizes, what fixes them)."""
    for name, (dims, expected, source) in fixed.items():
        tensor = state.get(name)
        dims, expected = (dims, expected) if isinstance(dims, tuple) else ((dims,), (expected,))
        if not torch.is_tensor(tensor) or tensor.dim() <= max(dims):
            continue  # a missing or differently shaped tensor is named by slice_state_dict
        found = tuple(tensor.shape[d] for d in dims)
        if found != expected:
            what = f"{found[0]} rows along dimension {dims[0]}" if len(dims) == 1 else \
                f"sizes {'×'.join(map(str, found))} along dimensions {', '.join(map(str, dims))}"
            raise ValueError(f"{owner} weights: {name!r} has {what}, this super-network "
                             f"{'×'.join(map(str, expected))}; {source}")


def build_module(make, weights, owner: str, seed: int, prepare=None):
    """The module `make()` constructs, with random weights (seeded) or a super-network's slices.

    `make()` runs on the meta device, so construction allocates nothing and skips torch's default
    initialisation, which would be wasted: without `weights`, storage is allocated once (on the default
    device) and the module's `init_weights()` fills it; with `weights` (a super-network state dict or
    checkpoint path, passed through `prepare(module, state)` if given), their slices become the
    parameters. Storage starts as NaN, so a parameter `init_weights` forgets cannot go unnoticed.
    """
    with torch.device("meta"):
        module = make()
    if weights is None:
        module.to_empty(device=torch.get_default_device())
        with torch.no_grad(), seeded(seed):
            for tensor in module.state_dict().values():
                tensor.fill_(float("nan"))
            module.init_weights()
    else:
        state = read_weights(weights, owner)
        if prepare is not None:
            state = prepare(module, state)
        module.load_state_dict(slice_state_dict(module, state, owner), assign=True)
    return module.eval()


@contextlib.contextmanager
def seeded(seed: int):
    """Runs its body with torch's global generator seeded, and restores the generator afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
