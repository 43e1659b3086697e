"""FedAvg helpers for numpy, nested structures and torch."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from fedloom import FedAvg, fedavg, weighted_mean


def test_numpy_mean_and_weighted_mean_keep_dtype():
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = np.array([3.0, 6.0], dtype=np.float32)
    np.testing.assert_allclose(fedavg([a, b]), [2.0, 4.0])
    weighted = fedavg([a, b], weights=[3, 1])
    np.testing.assert_allclose(weighted, [1.5, 3.0])
    assert weighted.dtype == np.float32
    assert FedAvg is fedavg
    a_before = a.copy()
    fedavg([a, b])
    np.testing.assert_array_equal(a, a_before)  # inputs are not modified


def test_nested_structures_and_integer_arrays():
    values = [{"w": np.ones(2), "layers": [np.zeros(1), 2.0], "steps": np.array(4)},
              {"w": np.full(2, 3.0), "layers": [np.ones(1), 4.0], "steps": np.array(6)}]
    out = fedavg(values)
    np.testing.assert_allclose(out["w"], [2.0, 2.0])
    np.testing.assert_allclose(out["layers"][0], [0.5])
    assert out["layers"][1] == pytest.approx(3.0)
    assert out["steps"] == 5 and out["steps"].dtype == values[0]["steps"].dtype
    ordered = fedavg([OrderedDict(a=np.ones(1)), OrderedDict(a=np.zeros(1))])
    assert isinstance(ordered, OrderedDict)


def test_mismatched_or_unknown_values_are_clear_errors():
    with pytest.raises(ValueError, match=r"value 1 has keys \['b'\], expected \['a'\]"):
        fedavg([{"a": 1.0}, {"b": 1.0}])
    with pytest.raises(TypeError, match="don't know how to average str"):
        fedavg(["x", "y"])
    with pytest.raises(ValueError, match="at least one"):
        fedavg([])
    with pytest.raises(ValueError, match="2 weights for 1 values"):
        fedavg([1.0], weights=[1, 2])
    with pytest.raises(ValueError, match="positive sum"):
        fedavg([1.0, 2.0], weights=[0, 0])


def test_weighted_mean_of_metrics():
    assert weighted_mean([0.5, 1.0], weights=[1, 3]) == pytest.approx(0.875)
    assert weighted_mean([1, 2, 3]) == pytest.approx(2.0)


def test_torch_modules_state_dicts_and_tensors():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
              for _ in range(3)]
    averaged = fedavg(models, weights=[1, 1, 2])
    assert averaged is not models[0]
    expected = (models[0][0].weight + models[1][0].weight + 2 * models[2][0].weight) / 4
    torch.testing.assert_close(averaged[0].weight, expected.detach())
    tracked = averaged[1].num_batches_tracked
    assert tracked.dtype == torch.long
    state = fedavg([m.state_dict() for m in models])
    torch.testing.assert_close(state["0.bias"], torch.stack(
        [m[0].bias.detach() for m in models]).mean(0))
    tensors = fedavg([torch.ones(2), torch.zeros(2)])
    torch.testing.assert_close(tensors, torch.full((2,), 0.5))
