"""Reading a super-network checkpoint: a state dict given as such, or a file read as tensors alone.

Shared by every buildable space (OFA, the transformers, the demo) so that each way a checkpoint can be
wrong gets the same clear error naming the path. Files are read with torch.load(weights_only=True) and
never otherwise: a checkpoint may come from anywhere, and unpickling arbitrary objects runs arbitrary code.
torch is imported on first use, so that a space's module loads without it.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

# What torch.load(weights_only=True) raises on a file that is not a torch checkpoint, is cut short, or pickles
# objects other than tensors (then UnpicklingError, whose message suggests weights_only=False: never do that).
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, IndexError, KeyError, TypeError,
               OverflowError)


def read_weights(weights, owner: str) -> Mapping:
    """A state dict from a mapping or from a checkpoint file (`load_checkpoint`).

    Checkpoints that nest the state dict under "model" (fairseq, HAT) or "state_dict" (OFA) are unwrapped.
    """
    if isinstance(weights, (str, os.PathLike)):
        weights = load_checkpoint(weights, owner)
    elif not isinstance(weights, Mapping):
        raise TypeError(f"{owner} weights must be a state dict or a path to a checkpoint, "
                        f"got {type(weights).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(weights.get(key), Mapping):
            weights = weights[key]
    return weights


def load_checkpoint(path, owner: str) -> Mapping:
    """The mapping a checkpoint file holds, read as tensors alone; each way it can fail is said naming the path."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"the {owner} checkpoint {path} is a directory; give the checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"no {owner} checkpoint file at {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as exc:
        raise ValueError(f"{path} cannot be read as tensors alone (torch.load with weights_only=True raised "
                         f"{type(exc).__name__}): it is not a torch checkpoint, or it holds more than tensors "
                         f"(then save its state dict alone)") from None
    if not isinstance(loaded, Mapping):
        raise ValueError(f"the {owner} checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    return loaded
