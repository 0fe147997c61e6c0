"""Per-layer FLOPs against torch's FlopCounterMode, and the least bytes each layer moves."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ccnbench.models import VARIANTS, build_kept, merge, spec_from_preset
from ccnbench.roofline.layer_costs import trace_costs


def _flop_counts(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    root = type(module).__name__
    return {
        name.removeprefix(root + "."): int(sum(ops.values()))
        for name, ops in counter.get_flop_counts().items()
        if name.startswith(root + ".")
    }


def _inputs(spec, batch: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, *spec.input_shape, generator=generator) for _ in range(spec.num_inputs))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch", [1, 3])
def test_every_layer_counts_the_flops_flopcountermode_counts(variant: str, batch: int) -> None:
    spec = spec_from_preset("tiny", variant, branches=3)
    kept = build_kept(spec).eval()
    for module in (kept, merge(kept).eval()):
        inputs = _inputs(spec, batch)
        costs = trace_costs(module, inputs)
        reference = _flop_counts(module, inputs)
        leaves = {p: c.flops for p, c in costs.layers.items()}
        assert leaves, "no layer was counted"
        for path, flops in leaves.items():
            assert flops == reference.get(path, 0), path
        assert costs.total().flops == sum(v for p, v in reference.items() if p in leaves)
        assert any(f > 0 for f in leaves.values())


def test_a_library_network_counts_as_flopcountermode() -> None:
    monai = pytest.importorskip("monai")
    net = monai.networks.nets.resnet10(spatial_dims=3, n_input_channels=1, num_classes=2).eval()
    x = (torch.randn(2, 1, 16, 16, 16),)
    costs = trace_costs(net, x)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(*x)
    assert costs.total().flops == counter.get_total_flops()
    assert costs.layers["conv1"].flops > 0 and costs.layers["bn1"].flops == 0


class _Scale(nn.Module):
    """A layer type the analytic count does not know: its count comes from FlopCounterMode."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_an_unknown_layer_type_takes_flopcountermodes_count() -> None:
    net = nn.Sequential(nn.Linear(4, 4), _Scale()).eval()
    costs = trace_costs(net, (torch.randn(5, 4),))
    assert costs.layers["1"].flops == 2 * 5 * 4 * 4
    assert costs.layers["0"].flops == 2 * 5 * 4 * 4


def test_bytes_are_weights_plus_tensors_read_and_written() -> None:
    conv = nn.Conv3d(2, 3, 3)
    net = nn.Sequential(conv, nn.LeakyReLU(inplace=True)).eval()
    x = torch.randn(1, 2, 6, 6, 6)
    costs = trace_costs(net, (x,))
    out = 1 * 3 * 4 * 4 * 4
    weights = conv.weight.numel() + conv.bias.numel()
    assert costs.layers["0"].bytes == 4 * (weights + x.numel() + out)
    # In place: it reads its input and writes it again, and both count.
    assert costs.layers["1"].bytes == 4 * (out + out)
    # Run as one unit, the tensor passed between them never leaves it.
    assert costs.of(["0", "1"]).bytes == 4 * (weights + x.numel() + out)
    half = trace_costs(net, (x,), "fp16")
    assert half.layers["0"].bytes * 2 == costs.layers["0"].bytes
    assert trace_costs(net, (x,), "int8-s8").layers["0"].bytes * 4 == costs.layers["0"].bytes
    assert costs.of(["nothing"]) is None


def test_a_layer_called_twice_counts_both_calls_and_its_weights_once() -> None:
    shared = nn.Linear(4, 2)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = shared

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.shared(a) + self.shared(b)

    costs = trace_costs(Twice().eval(), (torch.randn(3, 4), torch.randn(3, 4)))
    layer = costs.layers["shared"]
    assert layer.calls == 2
    assert layer.flops == 2 * (2 * 3 * 4 * 2)
    assert layer.bytes == 4 * ((4 * 2 + 2) + 2 * (3 * 4) + 2 * (3 * 2))
