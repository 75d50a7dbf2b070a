"""Tests of the ScaleNet joint search (synthetic score)."""

import random
import statistics

import pytest

from tenfold.nas import scalenet_search as ss
from tenfold.nas.scalenet import ScaleNetSpace, check_basenet, is_feasible, official_flops


def _space() -> ScaleNetSpace:
    sp = ScaleNetSpace.tiny()
    rng = random.Random(0)
    fl = [
        official_flops(sp, [*check_basenet(sp, [rng.randint(0, c - 1) for c in sp.block_choices()]), 1.0, 16])
        for _ in range(50)
    ]
    return ScaleNetSpace.tiny(flops_constraint=float(statistics.median(fl)))


def _score(enc):
    return -sum((v - 1) ** 2 for v in enc[:-2]) / 10 + 0.001 * enc[-1]


def test_init_bases_feasible():
    sp = _space()
    for b in ss.get_init_basenet(sp, random.Random(1), 3):
        assert is_feasible(sp, b, None, 0, sp.err_base)
    with pytest.raises(ValueError, match="feasible"):
        ss.get_init_basenet(ScaleNetSpace.tiny(flops_constraint=1.0), random.Random(1), 2, max_tries=50)


def test_grid_equals_bruteforce():
    sp = _space()
    b = ss.get_init_basenet(sp, random.Random(2), 1)[0]
    rows = ss.grid_search(sp, b, 1, _score)
    brute = []
    for d in range(len(sp.depth_multipliers[1])):
        for w in range(len(sp.width_multipliers[1])):
            for r in range(len(sp.resolutions[1])):
                enc = ss.scale_basenet(
                    sp, b, sp.depth_multipliers[1][d], sp.width_multipliers[1][w], sp.resolutions[1][r]
                )
                if abs(2 * official_flops(sp, [*b, 1.0, 16]) - official_flops(sp, enc)) <= sp.err_scale * 2:
                    brute.append((_score(enc), (d, w, r)))
    assert [r[1] for r in rows] == [r[1] for r in sorted(brute, key=lambda t: -t[0])]


def test_resume_equals_uninterrupted(tmp_path):
    sp = _space()
    pops: dict[str, list] = {}

    def keep(tag):
        def cb(st):
            pops[tag] = [list(r) for r in st["pop"]]  # the population after the latest generation

        return cb

    full = ss.search(sp, _score, tmp_path / "a.json", seed=3, callback=keep("full"))

    def stop(st):
        if st["round"] == 0 and st["gen"] == 2:
            raise ss.SearchStopped

    with pytest.raises(ss.SearchStopped):
        ss.search(sp, _score, tmp_path / "b.json", seed=3, callback=stop)
    res = ss.search(sp, _score, tmp_path / "b.json", seed=3, resume=True, callback=keep("resumed"))
    assert pops["resumed"] == pops["full"] and len(pops["full"]) == 8  # the final population
    for key in ("topk", "strategy", "bases", "cache", "evaluations", "round"):
        assert res[key] == full[key], key
    assert res["rng"] == full["rng"]


def test_corrupt_state(tmp_path):
    p = tmp_path / "s.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="cannot resume"):
        ss.search(_space(), _score, p, resume=True)


def test_ga_beats_random_sampling_on_the_same_budget(tmp_path):
    """Additive synthetic score over the ops of the scaled encodings; every member feasible (wide tolerances)."""
    from dataclasses import replace

    from tenfold.nas.scalenet import family_score

    sp = replace(ScaleNetSpace.paper(), err_base=1e12, err_scale=1e12)
    margins = []
    for seed in range(4):
        r = random.Random(100 + seed)
        w = [[r.gauss(0, 1) for _ in range(4)] for _ in range(sp.num_blocks)]

        def score(e, w=w):
            return sum(w[i][int(o)] for i, o in enumerate(e[:-2]))

        pop, gens = 16, 8
        st = ss.search(sp, score, tmp_path / f"s{seed}.json", pop_size=pop, n_gens=gens, admm_iter=1, n_init=4,
                       seed=seed)  # fmt: skip
        strat = {int(k): tuple(v) for k, v in st["strategy"].items()}
        rng, seen, best = random.Random(seed), set(), -1e9
        while len(seen) < pop * (gens + 1):  # as many distinct bases as the GA evaluated
            b = check_basenet(sp, [rng.randint(0, c - 1) for c in sp.block_choices()])
            if str(b) not in seen:
                seen.add(str(b))
                best = max(best, family_score(sp, b, strat, score))
        margins.append(st["topk"][0][0] - best)
    assert min(margins) > 2.0 and statistics.mean(margins) > 4.0, margins
