from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from models.networks import ARCHITECTURES, MLP, TCN, build_network, check_hyper
from trading.errors import Invalid


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend on shared cores
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("output", ["direction", "return"])
@pytest.mark.parametrize(("batch", "lookback"), [(1, 1), (7, 16), (3, 40)])
def test_networks_return_one_number_per_window(architecture: str, output: str, batch: int,
                                               lookback: int) -> None:
    network = build_network(architecture, 5, lookback, output, seed=0)
    out = network(torch.randn(batch, lookback, 5))
    assert out.shape == (batch,)
    assert torch.isfinite(out).all()
    assert (network.architecture, network.n_features, network.lookback, network.output) == \
        (architecture, 5, lookback, output)


def test_registry_and_defaults() -> None:
    assert ARCHITECTURES == {"mlp": MLP, "tcn": TCN}
    mlp = build_network("mlp", 3, 4, "direction")
    assert mlp.hyper == {"hidden": [64, 32], "dropout": 0.1}
    tcn = build_network("tcn", 3, 4, "return", channels=8, levels=2)
    assert tcn.hyper == {"channels": 8, "levels": 2, "kernel_size": 3, "dropout": 0.1}
    assert json.loads(json.dumps(tcn.hyper)) == tcn.hyper
    custom = build_network("mlp", 3, 4, "direction", hidden=(8,), dropout=0)
    linears = [m for m in custom.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 8), (8, 1)]
    assert check_hyper("mlp", {"hidden": [np.int64(4)]})["hidden"] == [4]


@pytest.mark.parametrize(("architecture", "args", "hyper", "field"), [
    ("lstm", (3, 4, "direction"), {}, "architecture"),
    ("mlp", (3, 4, "direction"), {"layers": 2}, "layers"),
    ("mlp", (3, 4, "direction"), {"hidden": []}, "hidden"),
    ("mlp", (3, 4, "direction"), {"hidden": "64"}, "hidden"),
    ("mlp", (3, 4, "direction"), {"hidden": [64, 0]}, "hidden"),
    ("mlp", (3, 4, "direction"), {"hidden": [64.5]}, "hidden"),
    ("mlp", (3, 4, "direction"), {"dropout": 1.0}, "dropout"),
    ("mlp", (3, 4, "direction"), {"dropout": "0.1"}, "dropout"),
    ("tcn", (3, 4, "direction"), {"channels": 0}, "channels"),
    ("tcn", (3, 4, "direction"), {"levels": 11}, "levels"),
    ("tcn", (3, 4, "direction"), {"kernel_size": 1}, "kernel_size"),
    ("tcn", (3, 4, "direction"), {"dropout": -0.5}, "dropout"),
    ("tcn", (3, 4, "direction"), {"hidden": [4]}, "hidden"),
    ("mlp", (0, 4, "direction"), {}, "n_features"),
    ("mlp", (3, 0, "direction"), {}, "lookback"),
    ("mlp", (3, True, "direction"), {}, "lookback"),
    ("tcn", (3, 4, "price"), {}, "output"),
])
def test_bad_arguments_name_their_field(architecture: str, args: tuple[int, int, str],
                                        hyper: dict[str, object], field: str) -> None:
    with pytest.raises(Invalid) as e:
        build_network(architecture, *args, **hyper)  # type: ignore[arg-type]
    assert e.value.field == field


def test_a_seed_fixes_the_initial_weights_without_touching_the_global_generator() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_network("tcn", 4, 8, "direction", seed=5)
    assert torch.equal(torch.rand(3), expected_next)
    b = build_network("tcn", 4, 8, "direction", seed=5)
    c = build_network("tcn", 4, 8, "direction", seed=6)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert any(not torch.equal(x, z) for x, z in zip(a.parameters(), c.parameters(), strict=True))


def test_tcn_steps_see_only_earlier_steps() -> None:
    network = build_network("tcn", 2, 12, "return", seed=0, levels=3, dropout=0.0)
    network.eval()
    x = torch.randn(1, 12, 2)
    changed = x.clone()
    changed[0, 7:] += 5.0
    with torch.no_grad():
        blocks = network.blocks
        assert isinstance(blocks, torch.nn.Module)
        before = blocks(x.transpose(1, 2))
        after = blocks(changed.transpose(1, 2))
    assert torch.equal(before[..., :7], after[..., :7])
    assert not torch.equal(before[..., 7:], after[..., 7:])


def test_scaling_standardises_inputs_and_rescales_the_output() -> None:
    network = build_network("mlp", 2, 3, "return", seed=0, dropout=0.0)
    network.eval()
    x = torch.randn(4, 3, 2)
    with torch.no_grad():
        plain = network(x)
        network.set_scaling(np.array([1.0, -2.0]), np.array([2.0, 0.0]), target_mean=0.5,
                            target_std=3.0)
        moved = network(x * torch.tensor([2.0, 1.0]) + torch.tensor([1.0, -2.0]))
    assert torch.allclose(moved, plain * 3.0 + 0.5, atol=1e-5)  # a zero deviation counts as 1
    assert set(network.state_dict()) >= {"feature_mean", "feature_std", "target_mean", "target_std"}
