"""A user-defined super-network: an elastic MLP (depth and per-layer width) over 64 input features.

Only numpy and torch are imported, and torch only inside build(): device agents load this module to build
sub-networks from specs, and `fleetnas space list` loads it without paying for torch.
"""
from fleetnas.supernets import SearchSpace, SuperNetwork, Variable

MAX_LAYERS = 4
WIDTHS = (32, 64, 128, 256)


def _rule(config):
    """Layers beyond the depth must keep their first choice, so that each network has one config."""
    unused = [f"width_{i}" for i in range(config["depth"], MAX_LAYERS) if config[f"width_{i}"] != WIDTHS[0]]
    return f"{unused[0]} is beyond depth {config['depth']}: leave it at {WIDTHS[0]}" if unused else None


SPACE = SearchSpace(
    "tiny_mlp",
    [Variable("depth", (1, 2, 3, 4))] + [Variable(f"width_{i}", WIDTHS) for i in range(MAX_LAYERS)],
    rule=_rule,
    description="elastic MLP: depth 1-4, width per layer 32-256 (example plug-in)",
)


class TinyMLP(SuperNetwork):
    space = SPACE

    def build(self, config, weights=None):
        import torch

        config = self.space.validate(config)
        layers, width = [], 64
        for i in range(config["depth"]):
            layers += [torch.nn.Linear(width, config[f"width_{i}"]), torch.nn.ReLU()]
            width = config[f"width_{i}"]
        layers.append(torch.nn.Linear(width, 10))
        module = torch.nn.Sequential(*layers)
        if weights is not None:  # a state dict of this very sub-network, e.g. from fine-tuning
            module.load_state_dict(weights if isinstance(weights, dict) else torch.load(weights, weights_only=True))
        return module.eval()

    def input_specs(self, config, batch=1):
        return [{"name": "features", "shape": [batch, 64], "dtype": "float32"}]


SUPERNET = TinyMLP()
