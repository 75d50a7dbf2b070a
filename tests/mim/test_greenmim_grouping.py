"""GreenMIM masking, optimal grouping and group window attention: properties, brute force and official groupings."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch

from tenfold.mim.attention import GroupWindowAttention
from tenfold.mim.grouping import (
    MASK_VALUE,
    build_grouping,
    choose_group_size,
    grouping_cost,
    knapsack_fill,
    pack_windows,
    window_ids,
)
from tenfold.mim.masking import mask_from_noise, random_unit_mask, units_to_tokens

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "greenmim"


# ---------------------------------------------------------------------------------------------------------- masks


def test_mask_keeps_official_count_and_is_shared_by_default():
    m = random_unit_mask(4, 49, 0.75, generator=torch.Generator().manual_seed(0))
    assert m.mask.shape == (4, 49)
    assert torch.equal(m.mask, m.mask[:1].expand(4, -1))  # one mask per batch
    assert int((m.mask[0] == 0).sum()) == 12  # int(49 * 0.25)
    # ids_restore inverts ids_shuffle, and the first len_keep shuffled units are the kept ones
    assert torch.equal(m.ids_shuffle.gather(1, m.ids_restore), torch.arange(49).expand(4, -1))
    assert bool((m.mask.gather(1, m.ids_shuffle[:, :12]) == 0).all())


def test_per_sample_masks_differ_and_keep_equal_counts():
    m = random_unit_mask(6, 49, 0.75, per_sample=True, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(m.mask[0], m.mask[1])
    assert (m.mask == 0).sum(1).tolist() == [12] * 6


def test_mask_from_noise_matches_argsort_rule():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    m = mask_from_noise(noise, 0.5, 2)
    assert m.mask.tolist() == [[1.0, 0.0, 1.0, 0.0]] * 2


@pytest.mark.parametrize(
    "ratio, words",
    [
        (0.99, "nothing would be visible"),
        (1.0, "nothing would be visible"),
        (0.0, "nothing would be masked"),
        (-0.1, "nothing would be masked"),
    ],
)
def test_mask_ratio_errors(ratio, words):
    with pytest.raises(ValueError, match=words):
        random_unit_mask(2, 49, ratio)


@pytest.mark.parametrize("num_units", [9, 36, 49])
def test_mask_ratio_hints_name_the_exact_limits(num_units):
    """The suggested ratios work, and one step (1e-4) past them does not."""
    import re

    with pytest.raises(ValueError) as high:
        random_unit_mask(1, num_units, 1.0)
    largest = float(re.search(r"at most ([0-9.]+)", str(high.value)).group(1))
    assert int((random_unit_mask(1, num_units, largest).mask == 0).sum()) == 1
    with pytest.raises(ValueError, match="nothing would be visible"):
        random_unit_mask(1, num_units, largest + 1e-4)
    with pytest.raises(ValueError) as low:
        random_unit_mask(1, num_units, 0.0)
    smallest = float(re.search(r"at least ([0-9.]+)", str(low.value)).group(1))
    assert int(random_unit_mask(1, num_units, smallest).mask.sum()) == 1
    assert smallest <= 1e-4


def test_units_to_tokens_upsamples_each_unit():
    vis = torch.tensor([[True, False, False, True]])
    tok = units_to_tokens(vis, (2, 2), (4, 4)).view(4, 4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(tok, expected)


# ------------------------------------------------------------------------------------------------------ knapsack


def _table_knapsack(counts, capacity):
    """The textbook 0/1 knapsack table with the official backtracking (independent of the bitset version)."""
    n = len(counts)
    K = [[0] * (capacity + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for w in range(1, capacity + 1):
            K[i][w] = K[i - 1][w]
            if counts[i - 1] <= w:
                K[i][w] = max(K[i][w], counts[i - 1] + K[i - 1][w - counts[i - 1]])
    res = total = K[n][capacity]
    w, idx = capacity, []
    for i in range(n, 0, -1):
        if res <= 0:
            break
        if res != K[i - 1][w]:
            idx.append(i - 1)
            res -= counts[i - 1]
            w -= counts[i - 1]
    return total, idx[::-1]


def test_knapsack_equals_table_dp_and_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 9)
        counts = [rng.randint(1, 12) for _ in range(n)]
        cap = rng.randint(max(counts), 25)
        total, chosen = knapsack_fill(counts, cap)
        assert (total, chosen) == _table_knapsack(counts, cap)
        assert sum(counts[i] for i in chosen) == total <= cap
        best = max(sum(s) for r in range(n + 1) for s in itertools.combinations(counts, r) if sum(s) <= cap)
        assert total == best  # every group is filled as full as any subset allows


def _exhaustive_min_groups(counts, capacity):
    """Fewest groups of capacity ``capacity`` holding all windows: a DP over subsets of windows, independent of the
    code under test. ``best[S]`` is the lexicographically least (groups, fill of the last group) over all orders of
    the windows in S, each window going into the last group if it fits and opening a new one otherwise; every
    packing is reached by some order, so ``best[all][0]`` is the exact optimum (bin packing, O(n 2^n))."""
    n = len(counts)
    best = [(n + 1, 0)] * (1 << n)
    best[0] = (1, 0)
    for subset in range(1, 1 << n):
        rest = subset
        while rest:
            low = rest & -rest
            rest ^= low
            groups, fill = best[subset ^ low]
            c = counts[low.bit_length() - 1]
            best[subset] = min(best[subset], (groups, fill + c) if fill + c <= capacity else (groups + 1, c))
    return best[-1][0]


def _set_partitions(items):
    if not items:
        yield []
        return
    for part in _set_partitions(items[1:]):
        for i in range(len(part)):
            yield part[:i] + [[items[0], *part[i]]] + part[i + 1 :]
        yield [[items[0]], *part]


def test_exhaustive_packer_equals_enumerating_every_partition():
    """The oracle itself, against the enumeration of all set partitions (n <= 6)."""
    rng = random.Random(7)
    for _ in range(150):
        counts = [rng.randint(1, 9) for _ in range(rng.randint(1, 6))]
        cap = rng.randint(max(counts), 12)
        brute = min(len(p) for p in _set_partitions(counts) if all(sum(grp) <= cap for grp in p))
        assert _exhaustive_min_groups(counts, cap) == brute


def test_greedy_packing_against_the_exhaustive_optimum():
    """What is true of the packing (spec 2.4: greedy, bin packing is NP-hard) and of the group-size search.

    * Every group is the fullest subset of the windows still left (brute force over subsets).
    * The group count is never below the exhaustive optimum and equals it in the vast majority of small random cases
      (measured here: 1030 of 1031 (case, g) pairs, 99.9 %; 3992 of 4000 with up to 10 windows at g = max count
      and g = ws^2), but not always: [1, 1, 2, 3, 2, 3] at g = 4 packs greedily into 4 groups ({1,1,2}, {3},
      {2}, {3}) where 3 suffice ({1,3}, {1,3}, {2,2}).
    * The searched group size costs no more than the official one (n_groups g^2), is the least cost over g for this
      greedy packing, and is bounded below by the exhaustive packings' least cost.
    """
    rng = random.Random(1)
    equal = total = 0
    for _ in range(300):
        ws = rng.randint(2, 5)
        counts = [rng.randint(1, ws * ws) for _ in range(rng.randint(1, 9))]
        greedy_cost, optimal_cost = {}, {}
        for g in range(max(counts), ws * ws + 1):
            sizes, groups = pack_windows(counts, g)
            assert sorted(w for grp in groups for w in grp) == list(range(len(counts)))  # each window exactly once
            left = list(range(len(counts)))
            for grp, size in zip(groups, sizes, strict=True):
                fullest = max(
                    sum(counts[w] for w in sub)
                    for r in range(len(left) + 1)
                    for sub in itertools.combinations(left, r)
                    if sum(counts[w] for w in sub) <= g
                )
                assert sum(counts[w] for w in grp) == size == fullest
                left = [w for w in left if w not in grp]
            optimum = _exhaustive_min_groups(counts, g)
            assert len(groups) >= optimum
            total += 1
            equal += len(groups) == optimum
            greedy_cost[g], optimal_cost[g] = grouping_cost(len(groups), g), grouping_cost(optimum, g)
        g_s, _, groups_s = choose_group_size(counts, ws, "search")
        g_o, _, groups_o = choose_group_size(counts, ws, "min_feasible")
        cost_s, cost_o = grouping_cost(len(groups_s), g_s), grouping_cost(len(groups_o), g_o)
        assert cost_s <= cost_o
        assert cost_s == min(greedy_cost.values())
        assert g_s == min(g for g, c in greedy_cost.items() if c == cost_s)  # ties go to the smaller g
        assert cost_s >= min(optimal_cost.values())
    assert equal / total >= 0.99, f"greedy equals the optimum in {equal} of {total} cases"
    assert len(pack_windows([1, 1, 2, 3, 2, 3], 4)[1]) == 4 and _exhaustive_min_groups([1, 1, 2, 3, 2, 3], 4) == 3


def test_search_can_beat_the_official_group_size():
    # windows of 9, 5, 5, 5, 5 tokens, ws=4: official g=9 -> 5 groups (cost 405); g=10 -> 3 groups (cost 300)
    counts = [9, 5, 5, 5, 5]
    g0, _, groups0 = choose_group_size(counts, 4, "min_feasible")
    g1, _, groups1 = choose_group_size(counts, 4, "search")
    assert (g0, len(groups0)) == (9, 5)
    assert grouping_cost(len(groups1), g1) < grouping_cost(len(groups0), g0)


def test_pack_rejects_windows_larger_than_groups():
    with pytest.raises(ValueError, match="smaller than the largest window"):
        pack_windows([3, 7], 5)


# ------------------------------------------------------------------------------------------------------ grouping


def _random_visible(rng, grid, unit):
    mh, mw = grid[0] // unit, grid[1] // unit
    vis_units = torch.rand(1, mh * mw, generator=rng) < 0.4
    vis_units[0, 0] = True
    tok = units_to_tokens(vis_units, (mh, mw), grid)
    idx = tok[0].nonzero()[:, 0]
    return torch.stack((idx // grid[1], idx % grid[1]), -1)[None]


@pytest.mark.parametrize("rule", ["min_feasible", "search"])
def test_grouping_covers_every_token_once_and_respects_group_size(rule):
    rng = torch.Generator().manual_seed(2)
    for _ in range(20):
        coords = _random_visible(rng, (24, 24), 4)
        for shift in (0, 2):
            grp = build_grouping(coords, (24, 24), 5, shift, rule, force_mode="grouping")
            n = coords.shape[1]
            assert grp.idx_unshuffle.shape == (n,)
            real = grp.attn_mask.diagonal(dim1=1, dim2=2).reshape(-1) == 0  # real slots attend to themselves
            assert int(real.sum()) == n
            assert sorted(grp.idx_shuffle[real].tolist()) == list(range(n))  # each token in exactly one slot
            assert torch.equal(grp.idx_shuffle[grp.idx_unshuffle], torch.arange(n))
            assert max(grp.tokens_per_group) <= grp.group_size <= 25
            x = torch.randn(3, n, 4)
            assert torch.equal(grp.merge(grp.group(x), 3), x)


def _dense_window_attention(attn: GroupWindowAttention, x, coords, grid, ws, shift):
    """Reference: loop over windows, plain softmax attention with Swin's relative bias inside each window."""
    wid = window_ids(coords[0], grid, ws, shift)
    out = torch.empty_like(x)
    h = attn.num_heads
    for w in wid.unique().tolist():
        sel = (wid == w).nonzero()[:, 0]
        xs = x[:, sel]
        b, n, c = xs.shape
        qkv = attn.qkv(xs).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        cs = coords[0, sel]
        d = cs[:, None] - cs[None] + ws - 1
        bias = attn.relative_position_bias_table[d[..., 0] * (2 * ws - 1) + d[..., 1]].permute(2, 0, 1)
        a = ((q * attn.scale) @ k.transpose(-2, -1) + bias).softmax(-1)
        out[:, sel] = attn.proj((a @ v).transpose(1, 2).reshape(b, n, c))
    return out


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("mode", ["grouping", "masking"])
def test_group_attention_equals_per_window_loop(fused, mode):
    torch.manual_seed(3)
    rng = torch.Generator().manual_seed(3)
    ws, grid = 4, (16, 16)
    attn = GroupWindowAttention(16, 2, ws, fused_attn=fused).eval()
    attn.relative_position_bias_table.data.normal_(0, 1.0)
    for shift in (0, 2):
        coords = _random_visible(rng, grid, 4)
        grp = build_grouping(coords, grid, ws, shift, force_mode=mode)
        x = torch.randn(2, coords.shape[1], 16)
        with torch.no_grad():
            ours = grp.merge(attn(grp.group(x), grp.attn_mask, grp.rel_pos_idx), 2)
            ref = _dense_window_attention(attn, x, coords, grid, ws, shift)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_attention_mask_blocks_other_windows_and_padding():
    coords = _random_visible(torch.Generator().manual_seed(4), (16, 16), 4)
    grp = build_grouping(coords, (16, 16), 3, 0, force_mode="grouping")
    gid = window_ids(coords[0], (16, 16), 3, 0)
    slot_gid = gid[grp.idx_shuffle].view(grp.num_groups, grp.group_size)
    real = grp.attn_mask.diagonal(dim1=1, dim2=2) == 0
    allowed = (slot_gid[:, :, None] == slot_gid[:, None, :]) & real[:, :, None] & real[:, None, :]
    assert torch.equal(grp.attn_mask == 0, allowed)
    assert bool((grp.attn_mask[~allowed] == MASK_VALUE).all())
    assert bool((grp.rel_pos_idx[~allowed] == 0).all())


def test_per_sample_grouping_equals_separate_groupings():
    torch.manual_seed(5)
    rng = torch.Generator().manual_seed(5)
    grid, ws = (16, 16), 4
    um = random_unit_mask(3, 4, 0.5, per_sample=True, generator=rng)  # 2 of 4 units of 8x8 tokens each
    vis = units_to_tokens(um.mask == 0, (2, 2), grid)
    idx = vis.nonzero()[:, 1].view(3, -1)
    coords = torch.stack((idx // 16, idx % 16), -1)
    n = coords.shape[1]
    attn = GroupWindowAttention(8, 2, ws).eval()
    x = torch.randn(3, n, 8)
    for mode in ("grouping", "masking"):
        joint = build_grouping(coords, grid, ws, 2, force_mode=mode)
        with torch.no_grad():
            ours = joint.merge(attn(joint.group(x), joint.attn_mask, joint.rel_pos_idx), 3)
            for b in range(3):
                single = build_grouping(coords[b : b + 1], grid, ws, 2, force_mode=mode)
                ref = single.merge(attn(single.group(x[b : b + 1]), single.attn_mask, single.rel_pos_idx), 1)
                torch.testing.assert_close(ours[b : b + 1], ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- official groupings


def test_groupings_reproduce_official_on_swin_b_masks():
    records = json.loads((FIXTURES / "official_groupings.json").read_text())
    checked = 0
    for rec in records:
        ws, res = rec["window_size"], 56 // 2 ** rec["stage"]
        g = torch.Generator().manual_seed(rec["seed"])
        um = mask_from_noise(torch.rand(1, 49, generator=g), 0.75, 1)
        vis = units_to_tokens(um.mask == 0, (7, 7), (res, res))
        idx = vis[0].nonzero()[:, 0]
        coords = torch.stack((idx // res, idx % res), -1)[None]
        assert coords.shape[1] == rec["n_vis"]
        grp = build_grouping(coords, (res, res), min(ws, res), rec["shift"])
        assert grp.mode == rec["mode"]
        if grp.mode != "grouping":
            continue
        assert grp.group_size == rec["group_size"]
        assert grp.window_counts == rec["window_counts"]
        assert grp.tokens_per_group == rec["tokens_per_group"]
        assert grp.windows_per_group == rec["windows_per_group"]
        w = min(ws, res)
        ncols = (res - 1 + (w - rec["shift"]) % w) // w + 1
        assert [[i // ncols, i % ncols] for i in grp.window_index] == rec["windows_rc"]
        checked += 1
    assert checked >= 40
