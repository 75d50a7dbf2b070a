"""Benchmark spaces: keys, lookups and ranks against the raw tables; clear errors on missing or bad tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tenfold.nas.spaces import SPACES, competition_ranks, load_space, round_half_up

FILES = {
    "nas-bench-macro": "nas_bench_macro_cifar10.json",
    "channel-bench-resnet": "channel_bench_macro_resnet_cifar10.json",
    "channel-bench-mobilenet": "channel_bench_macro_mobilenet_cifar10.json",
    "nas-bench-201-cifar10": "nas_bench_201_cifar10.json",
    "nas-bench-201-cifar100": "nas_bench_201_cifar100.json",
    "nas-bench-201-imagenet16-120": "nas_bench_201_imagenet.json",
}
# best entry of each table (README of the shared tables; test accuracy on NAS-Bench-201)
BEST = {
    "nas-bench-macro": 93.13,
    "channel-bench-resnet": 93.89,
    "channel-bench-mobilenet": 91.89,
    "nas-bench-201-cifar10": 94.37,
    "nas-bench-201-cifar100": 73.51,
    "nas-bench-201-imagenet16-120": 47.31,
}


def _raw(tables, name):
    with open(tables / FILES[name]) as f:
        return json.load(f)


def test_registry_names():
    assert set(SPACES) == set(FILES)


@pytest.mark.parametrize("name", list(FILES))
def test_keys_round_trip_and_lookup(tables, name):
    space = load_space(name, tables)
    raw = _raw(tables, name)
    assert space.size == len(raw)
    for key in raw:
        assert space.key(space.decode(key)) == key
    answer, best = space.best()
    assert round(best.report_acc, 2) == BEST[name] and best.rank == 1
    key = next(iter(raw))
    ev = space.evaluate(space.decode(key))
    if name.startswith("nas-bench-201"):
        acc_field, report_field = "val_acc_200", "test_acc_200"
    else:
        acc_field = report_field = "mean_acc" if name == "nas-bench-macro" else "mean"
    assert (ev.acc, ev.report_acc) == (raw[key][acc_field], raw[key][report_field])


def test_macro_and_channel_encodings(tables):
    macro = load_space("nas-bench-macro", tables)
    assert macro.key([0, 2, 0, 1, 2, 1, 0, 0]) == "02012100"
    resnet = load_space("channel-bench-resnet", tables)
    # the first entry of the table, "4432214": widths by 1-based index
    assert resnet.decode("4432214") == (256, 256, 192, 256, 256, 128, 512)
    assert resnet.key([4, 4, 3, 2, 2, 1, 4]) == "4432214"  # indices are accepted too
    mobile = load_space("channel-bench-mobilenet", tables)
    assert mobile.decode("4432214") == (128, 768, 576, 384, 128, 384, 1024)
    nb = load_space("nas-bench-201-cifar10", tables)
    assert nb.key([2, 1, 4, 2, 0, 2]) == (
        "|nor_conv_1x1~0|+|skip_connect~0|avg_pool_3x3~1|+|nor_conv_1x1~0|none~1|nor_conv_1x1~2|"
    )
    assert nb.evaluate([2, 1, 4, 2, 0, 2]).rank == 8163  # the table's own rank


# the paper's best-found architectures (spec "Headline figures"): key, accuracy as printed, official rank; the
# competition rank (1 + strictly better entries) differs where a tie group straddles the entry
ANCHORS = [
    ("nas-bench-macro", "22221222", 93.05, 8, 8),
    ("nas-bench-macro", "22212121", 92.92, 27, 27),
    ("nas-bench-macro", "22221121", 92.83, 61, 61),
    ("channel-bench-resnet", "4343424", 93.76, 33, 32),
    ("channel-bench-mobilenet", "4434444", 91.76, 16, 16),
]


@pytest.mark.parametrize(("name", "key", "acc", "official", "competition"), ANCHORS)
def test_paper_rank_anchors(tables, name, key, acc, official, competition):
    space = load_space(name, tables)  # rank_mode="official" is the default
    ev = space.evaluate(space.decode(key))
    assert round_half_up(ev.report_acc, 2) == acc
    assert ev.rank == official
    assert load_space(name, tables, rank_mode="competition").evaluate(space.decode(key)).rank == competition


@pytest.mark.parametrize("name", ["nas-bench-macro", "channel-bench-resnet", "channel-bench-mobilenet"])
def test_official_and_competition_ranks_of_the_mean(tables, name):
    official = load_space(name, tables)
    competition = load_space(name, tables, rank_mode="competition")
    raw = _raw(tables, name)
    field = "mean_acc" if name == "nas-bench-macro" else "mean"
    keys = list(raw)
    means = np.array([raw[k][field] for k in keys])
    ranks = np.array([official.evaluate(official.decode(k)).rank for k in keys])
    # a permutation of 1..N that orders the means (higher mean, better rank)...
    assert sorted(ranks.tolist()) == list(range(1, len(keys) + 1))
    order = np.argsort(ranks)
    assert np.all(np.diff(means[order]) <= 0)
    # ...in which tied entries take consecutive ranks (their order within a tie group is numpy's sort's)
    for k in keys[:200]:
        tied = np.flatnonzero(means == raw[k][field])
        if len(tied) > 1:
            assert sorted(ranks[tied].tolist()) == list(range(ranks[tied].min(), ranks[tied].min() + len(tied)))
    rng = np.random.default_rng(0)
    for i in rng.choice(len(keys), 50, replace=False):
        better = int((means > means[i]).sum())
        ties = int((means == means[i]).sum())
        assert competition.evaluate(competition.decode(keys[i])).rank == 1 + better
        assert 1 + better <= ranks[i] <= better + ties


def test_competition_ranks_on_ties():
    # tied scores share the best of their ranks; the next distinct score skips the places they took
    ranks = competition_ranks(np.array([92.5, 93.1, 93.1, 92.9, 93.1, 92.5, 90.0]))
    assert ranks.tolist() == [5, 1, 1, 4, 1, 5, 7] and ranks.dtype == np.int64
    rng = np.random.default_rng(0)
    for _ in range(50):  # many ties: the definition, 1 + the number of strictly higher scores
        scores = rng.integers(0, 6, size=int(rng.integers(1, 40))).astype(float)
        assert competition_ranks(scores).tolist() == [1 + int((scores > s).sum()) for s in scores]


def test_nas_bench_201_ranks(tables):
    raw = _raw(tables, "nas-bench-201-cifar10")
    official = load_space("nas-bench-201-cifar10", tables)
    competition = load_space("nas-bench-201-cifar10", tables, rank_mode="competition")
    test = np.array([v["test_acc_200"] for v in raw.values()])
    differ = 0
    for key in list(raw)[:300]:
        answer = official.decode(key)
        assert official.evaluate(answer).rank == raw[key]["rank"]  # the official script reads the table's rank
        comp = competition.evaluate(answer).rank
        assert comp == 1 + int((test > raw[key]["test_acc_200"]).sum())
        differ += comp != raw[key]["rank"]
    assert differ > 0  # the table's ranks are not competition ranks of its rounded test accuracies
    with pytest.raises(ValueError, match="unknown rank_mode 'dense'"):
        load_space("nas-bench-macro", tables, rank_mode="dense")


def test_rounding_is_half_up_on_the_exact_value():
    assert round_half_up(92.125, 2) == 92.13  # exactly representable: half up (Python's round gives 92.12)
    assert round_half_up(0.125, 2) == 0.13
    assert round_half_up(91.49599997884116, 3) == 91.496


def test_validation_messages(tables):
    space = load_space("channel-bench-mobilenet", tables)
    with pytest.raises(ValueError, match=r"position 1 is 48 \(allowed: 32, 64, 96, 128\)") as err:
        space.validate([48, 64, 192, 192, 64, 384, 256])
    assert "position 2 is 64" in str(err.value)


def test_missing_and_malformed_tables(tables, tmp_path):
    with pytest.raises(FileNotFoundError, match="nas_bench_macro_cifar10.json"):
        load_space("nas-bench-macro", tmp_path)
    with pytest.raises(ValueError, match="unknown search space 'nas-bench-101'"):
        load_space("nas-bench-101", tables)
    bad = tmp_path / "nas_bench_201_cifar100.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*nas_bench_201_cifar100.json"):
        load_space("nas-bench-201-cifar100", tmp_path)
    raw = _raw(tables, "nas-bench-macro")
    small = tmp_path / "small.json"
    small.write_text(json.dumps(dict(list(raw.items())[:10])))
    with pytest.raises(ValueError, match="10 entries, not 6561.*nas_bench_macro_cifar10.json"):
        load_space("nas-bench-macro", small)
    raw["02012100"] = {"std": 1.0}
    small.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="entry '02012100' lacks fields"):
        load_space("nas-bench-macro", small)
    raw = {("3" + k[1:] if i == 0 else k): v for i, (k, v) in enumerate(_raw(tables, "nas-bench-macro").items())}
    small.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="is not an architecture of this space"):
        load_space("nas-bench-macro", small)
