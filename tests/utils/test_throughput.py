"""Throughput measurement: structure and state restoration only (timings are never asserted)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tenfold.utils.throughput import ThroughputResult, measure_throughput


class _Counter(nn.Module):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.fail = fail
        self.calls: list[tuple[tuple[int, ...], bool, bool, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(x.shape), self.training, torch.is_inference_mode_enabled(), torch.get_num_threads()))
        if self.fail:
            raise RuntimeError("boom")
        return self.lin(x)


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield old
    torch.set_num_threads(old)


def test_structure(threads):
    model = _Counter().train()
    result = measure_throughput(model, (4,), batch_size=3, warmup=2, runs=7)
    assert isinstance(result, ThroughputResult)
    assert result.runs == 7 and result.batch_size == 3 and result.device == "cpu"
    assert result.threads == threads
    assert len(model.calls) == 2 + 7
    assert all(call[:3] == ((3, 4), False, True) for call in model.calls)  # eval, inference mode
    assert model.training  # restored
    assert result.median_s > 0 and result.iqr_s >= 0
    assert result.samples_per_s == pytest.approx(3 / result.median_s)


def test_single_run_has_zero_spread():
    result = measure_throughput(nn.Linear(4, 3), (4,), warmup=0, runs=1)
    assert result.runs == 1 and result.iqr_s == 0


def test_threads_set_then_restored(threads):
    torch.set_num_threads(2)
    model = _Counter()
    result = measure_throughput(model, (4,), threads=1, warmup=1, runs=2)
    assert result.threads == 1
    assert {call[3] for call in model.calls} == {1}
    assert torch.get_num_threads() == 2


def test_threads_and_mode_restored_on_error(threads):
    torch.set_num_threads(2)
    model = _Counter(fail=True).train()
    with pytest.raises(RuntimeError, match="boom"):
        measure_throughput(model, (4,), threads=1)
    assert torch.get_num_threads() == 2
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(runs=0), "runs"),
        (dict(warmup=-1), "warmup"),
        (dict(threads=0), "threads"),
        (dict(input_shape=()), "input_shape"),
        (dict(input_shape=(4, 0)), "input_shape"),
        (dict(dtype=torch.int64), "dtype"),
        (dict(dtype=torch.float64), "float32"),  # the model is float32: say so instead of failing inside it
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(input_shape=(4,), warmup=0, runs=1) | kwargs
    with pytest.raises(ValueError, match=match):
        measure_throughput(nn.Linear(4, 3), args.pop("input_shape"), **args)


def test_compare_throughput_alternates_and_pools_every_model():
    import torch.nn as nn

    from tenfold.utils.throughput import compare_throughput

    calls = []

    class Tagged(nn.Linear):
        def __init__(self, tag):
            super().__init__(4, 4)
            self.tag = tag

        def forward(self, x):
            calls.append(self.tag)
            return super().forward(x)

    out = compare_throughput({"a": Tagged("a"), "b": Tagged("b")}, (4,), rounds=3, runs_per_round=2, warmup=1)
    # warm-up and timed passes: a a a, b b b (round 1 with warm-up), then a a, b b twice: alternating rounds
    assert calls == ["a"] * 3 + ["b"] * 3 + (["a"] * 2 + ["b"] * 2) * 2
    assert {k: v.runs for k, v in out.items()} == {"a": 6, "b": 6}
    assert all(v.samples_per_s > 0 and v.device == "cpu" for v in out.values())
    with pytest.raises(ValueError, match="at least one model"):
        compare_throughput({}, (4,))
    with pytest.raises(ValueError, match="rounds"):
        compare_throughput({"a": Tagged("a")}, (4,), rounds=0)


def test_alternate_times_alternates_runs_after_untimed_and_takes_medians(monkeypatch):
    from tenfold.utils import throughput

    clock = {"t": 0.0}
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock["t"])
    calls: list[str] = []
    cost = {"a": [5.0, 1.0, 2.0, 9.0], "b": [7.0, 3.0, 3.0, 4.0]}

    def step(name):
        def run():
            calls.append(name)
            clock["t"] += cost[name][sum(c == name for c in calls) - 1]

        return run

    def after():
        calls.append("after-a")
        clock["t"] += 100.0  # untimed: must not enter a's times

    medians = throughput.alternate_times({"a": step("a"), "b": step("b")}, rounds=3, warmup=1, after={"a": after})
    assert calls == ["a", "after-a", "b"] * 4
    assert medians == {"a": 2.0, "b": 3.0}  # warm-up (5, 7) dropped; medians of (1, 2, 9) and (3, 3, 4)
    with pytest.raises(ValueError, match="rounds"):
        throughput.alternate_times({"a": step("a")}, rounds=0)


def test_saved_tensor_bytes_counts_saved_storages_once_and_skips_params():
    from tenfold.utils.throughput import saved_tensor_bytes

    a = torch.randn(1000, requires_grad=True)
    nbytes, out = saved_tensor_bytes(lambda: (a.sin() + a.sin()).sum())  # sin saves its input a, twice
    assert nbytes == 4000 and out.requires_grad
    assert saved_tensor_bytes(lambda: a.sin().sum(), [a])[0] == 0  # a is a parameter: not counted
    assert saved_tensor_bytes(lambda: a.exp().sum(), [a])[0] == 4000  # exp saves its (new) output
