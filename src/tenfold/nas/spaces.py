"""Search spaces for GINAS and the baselines: benchmark lookup tables, each with its task description.

GINAS (arXiv:2304.10970; the authors' code, mingkai-zheng/GENIUS, calls it GENIUS) asks a chat model for an
architecture from a discrete space described in words, scores it, and feeds the scores back. A space here is the
list of allowed values per answer position, a way to score an answer, and the words that describe it.

Benchmarks read from table files at a user path (the tables are not ours to ship):

* ``nas-bench-macro``: ``nas_bench_macro_cifar10.json``, 6561 entries; answer: 8 op ids in {0, 1, 2}.
* ``channel-bench-resnet``: ``channel_bench_macro_resnet_cifar10.json``, 16384 entries; answer: 7 channel numbers.
* ``channel-bench-mobilenet``: ``channel_bench_macro_mobilenet_cifar10.json``, 16384 entries; 7 channel numbers.
* ``nas-bench-201-{cifar10,cifar100,imagenet16-120}``: ``nas_bench_201_{cifar10,cifar100,imagenet}.json``, 15625
  entries each; answer: 6 op ids in {0..4}.

What the optimiser sees (``Evaluation.acc``) and what is reported (``Evaluation.report_acc``) are the same number
on the macro tables (the mean over three seeds); on NAS-Bench-201 the optimiser sees the validation accuracy and
the report gives the test accuracy of the architecture it selects, as the paper does.

The words that describe each space to the chat model are in :mod:`tenfold.nas.prompts`.

Ranks (1 = best), ``rank_mode``:

* ``"official"`` (default), as the official scripts compute them. Macro and channel tables:
  ``rank = N - argsort(argsort(mean))`` over the entries in file order, with numpy's default ``argsort`` (no
  ``kind=``). Entries with equal means get consecutive ranks, in the order numpy's default sort leaves them; that
  order is numpy's and could change with the numpy version or the CPU's sort kernels (measured here with numpy
  2.4 on x86-64). NAS-Bench-201: the ``rank`` field of the table, which the official script reads (a permutation
  of 1..15625 by test accuracy; its ties are broken by the table's producer).
* ``"competition"``: ``1 + the number of entries with a strictly higher score`` (the mean; the test accuracy on
  NAS-Bench-201), so tied entries share the best of their ranks; independent of any sort order
  (``scipy.stats.rankdata(method="min")`` of the negated scores).

The two differ only inside groups of equal scores: Channel-Bench ResNet's ``4343424`` (93.757%) is rank 33
officially (the paper's anchor) and 32 as a competition rank.
"""

from __future__ import annotations

import functools
import json
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tenfold.nas import prompts
from tenfold.nas.prompts import round_half_up

__all__ = [
    "SPACES",
    "ChannelBenchSpace",
    "Evaluation",
    "MacroBenchSpace",
    "NASBench201Space",
    "RANK_MODES",
    "SearchSpace",
    "TableSpace",
    "competition_ranks",
    "load_space",
    "official_ranks",
    "round_half_up",
]

Answer = tuple[int, ...]

#: Accepted ``rank_mode`` values of the table spaces (see the module docstring).
RANK_MODES = ("official", "competition")

#: NAS-Bench-Macro's searchable layers, ``(in_channels, out_channels, stride)`` for layer2..layer9 (the network is
#: :class:`tenfold.models.nas_macro.MacroNet`, whose default layers are these).
NAS_BENCH_MACRO_LAYERS: tuple[tuple[int, int, int], ...] = (
    (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1), (128, 256, 2), (256, 256, 1),
    (256, 256, 1),
)  # fmt: skip


@dataclass(frozen=True)
class Evaluation:
    """The score of one architecture.

    Attributes:
        acc: accuracy in percent that the optimiser sees (in the prompt, for selection).
        report_acc: accuracy in percent that is reported for the architecture (test accuracy on NAS-Bench-201,
            otherwise equal to ``acc``).
        rank: position in the benchmark (1 = best), or None when unknown (real training).
        info: further fields (flops, params, std, seconds...).
    """

    acc: float
    report_acc: float
    rank: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


def official_ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks as the official GENIUS scripts compute them: ``N - argsort(argsort(scores))``, 1 = best.

    numpy's default ``argsort`` (no ``kind=``) decides the order of equal scores, exactly as in the official
    scripts, so tied entries get consecutive ranks in that order.

    Args:
        scores: (N,) accuracies, higher is better, in table order.

    Returns:
        (N,) int64 ranks, a permutation of 1..N.
    """
    scores = np.asarray(scores, dtype=np.float64)
    return len(scores) - scores.argsort().argsort()


def competition_ranks(scores: np.ndarray) -> np.ndarray:
    """Competition ranks: ``1 + the number of strictly higher scores`` (tied entries share the best rank).

    This is ``scipy.stats.rankdata(-scores, method="min")``.

    Args:
        scores: (N,) accuracies, higher is better.

    Returns:
        (N,) int64 ranks in 1..N.
    """
    from scipy.stats import rankdata  # scipy.stats takes a second to import; only competition ranks need it

    return rankdata(-np.asarray(scores, dtype=np.float64), method="min").astype(np.int64)


class SearchSpace(ABC):
    """A discrete search space: allowed values per answer position, a scorer, and its description for a chat model.

    Subclasses set :attr:`choices` and the texts, and implement :meth:`evaluate`. An *answer* is the tuple the
    model is asked for (op ids or channel numbers); :meth:`key` is its identifier (the benchmark table key).

    Attributes:
        name: short name (``nas-bench-macro``...).
        choices: allowed answer values, one tuple per position.
        system_prompt: the system message.
        task_prompt: the task: the space, the operations, what the answer must look like.
        answer_noun: what the answer is called in prompts (``operation ID list``, ``channel list``).
        metric_noun: what the score fed back is called (``accuracy``, ``validation accuracy``).
        prompt_decimals: decimals of the accuracies fed back (rounded half up, as the official scripts do).
    """

    name: str = "space"
    choices: tuple[tuple[int, ...], ...] = ()
    system_prompt: str = prompts.DEFAULT_SYSTEM
    task_prompt: str = ""
    answer_noun: str = "operation ID list"
    metric_noun: str = "accuracy"
    prompt_decimals: int = 2

    @property
    def length(self) -> int:
        """Number of positions in an answer."""
        return len(self.choices)

    @property
    def size(self) -> int:
        """Number of architectures in the space."""
        return int(np.prod([len(c) for c in self.choices]))

    @property
    def format_suffix(self) -> str:
        """The closing instruction on the answer's form (the official 'nothing but the list')."""
        return prompts.format_suffix(self.answer_noun)

    def validate(self, values: Sequence[int]) -> Answer:
        """Check a proposed answer and return it in canonical form.

        Args:
            values: integers as proposed.

        Returns:
            The answer as a tuple.

        Raises:
            ValueError: wrong length or a value outside a position's choices; the message says which and what is
                allowed (it is sent back to the chat model as a correction).
        """
        values = tuple(int(v) for v in values)
        if len(values) != self.length:
            raise ValueError(f"the list has {len(values)} numbers, but exactly {self.length} are needed")
        bad = [
            f"position {i + 1} is {v} (allowed: {', '.join(map(str, c))})"
            for i, (v, c) in enumerate(zip(values, self.choices, strict=False))
            if v not in c
        ]
        if bad:
            raise ValueError("; ".join(bad))
        return values

    def key(self, answer: Sequence[int]) -> str:
        """Identifier of an answer: the digits of the choice indices (benchmarks override it with their table key)."""
        return "".join(str(c.index(v)) for v, c in zip(self.validate(answer), self.choices, strict=False))

    def format_answer(self, answer: Sequence[int]) -> str:
        """The answer as written in prompts, ``[1, 2, 0]``."""
        return "[" + ", ".join(str(v) for v in answer) + "]"

    def random_answer(self, rng: random.Random) -> Answer:
        """A uniformly random architecture."""
        return tuple(rng.choice(c) for c in self.choices)

    def neighbours(self, answer: Sequence[int]) -> list[Answer]:
        """All answers that differ from ``answer`` in exactly one position (position-major order)."""
        answer = tuple(answer)
        out = []
        for i, c in enumerate(self.choices):
            out += [answer[:i] + (v,) + answer[i + 1 :] for v in c if v != answer[i]]
        return out

    def mutate(self, answer: Sequence[int], rng: random.Random) -> Answer:
        """Change one uniformly chosen position to another of its values (the evolution's mutation)."""
        answer = tuple(answer)
        i = rng.randrange(self.length)
        value = rng.choice([v for v in self.choices[i] if v != answer[i]])
        return answer[:i] + (value,) + answer[i + 1 :]

    @abstractmethod
    def evaluate(self, answer: Sequence[int]) -> Evaluation:
        """Score a valid answer."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for result files."""
        return {"name": self.name, "size": self.size, "choices": [list(c) for c in self.choices]}


# ---------------------------------------------------------------------------------------------------------------
# benchmark tables


@functools.lru_cache(maxsize=8)
def _read_json(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """Parse a table once per (path, modification time, size): trials and tests reuse it."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class TableSpace(SearchSpace):
    """A benchmark read from a JSON table: ``{key: {field: value}}`` for every architecture of the space.

    Args:
        path: the table file, or a folder holding it under :attr:`filename`.
        rank_mode: ``"official"`` (default: the official scripts' ranks, ties in numpy's ``argsort`` order) or
            ``"competition"`` (tied entries share a rank); see the module docstring.

    Raises:
        FileNotFoundError: no table at ``path`` (the message names the expected file).
        ValueError: the file is not JSON, lacks entries or fields, or has keys outside the space; an unknown
            ``rank_mode``.
    """

    filename: str = ""
    acc_field: str = ""
    report_field: str = ""
    required_fields: tuple[str, ...] = ()

    def __init__(self, path: str | os.PathLike, rank_mode: str = "official") -> None:
        if rank_mode not in RANK_MODES:
            raise ValueError(f"unknown rank_mode {rank_mode!r}; expected one of {list(RANK_MODES)}")
        self.rank_mode = rank_mode
        path = Path(path)
        if path.is_dir():
            path = path / self.filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.name}: table {str(path)!r} not found; expected the benchmark file {self.filename!r} "
                f"({self.size} entries) or a folder that holds it"
            )
        self.path = path
        stat = path.stat()
        try:
            raw = _read_json(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{self.name}: table {str(path)!r} is not valid JSON ({err}); expected "
                             f"{self.filename!r}") from err  # fmt: skip
        self._table = self._check(raw)
        keys = list(self._table)
        scores = np.array([self._table[k][self.report_field] for k in keys], dtype=np.float64)
        self._ranks = self._table_ranks(keys, scores)

    def _malformed(self, why: str) -> ValueError:
        return ValueError(f"{self.name}: table {str(self.path)!r} is malformed: {why}; expected {self.filename!r} "
                          f"with {self.size} entries {{key: {{{', '.join(self.required_fields)}}}}}")  # fmt: skip

    def _check(self, raw: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(raw, dict):
            raise self._malformed(f"the top level is a {type(raw).__name__}, not an object")
        if len(raw) != self.size:
            raise self._malformed(f"it has {len(raw)} entries, not {self.size}")
        for key, entry in raw.items():
            try:
                self.decode(key)
            except ValueError as err:
                raise self._malformed(f"key {key!r} is not an architecture of this space ({err})") from err
            if not isinstance(entry, dict) or any(f not in entry for f in self.required_fields):
                has = sorted(entry) if isinstance(entry, dict) else entry
                raise self._malformed(f"entry {key!r} lacks fields (it has {has!r})")
        return raw

    def _table_ranks(self, keys: list[str], scores: np.ndarray) -> dict[str, int]:
        """Rank of every key (1 = best) by ``scores`` (the reported accuracy, in file order) under ``rank_mode``."""
        if self.rank_mode == "competition":
            ranks = competition_ranks(scores)
        else:
            ranks = official_ranks(scores)
        return dict(zip(keys, ranks.tolist(), strict=True))

    @abstractmethod
    def decode(self, key: str) -> Answer:
        """The answer of a table key (inverse of :meth:`key`).

        Raises:
            ValueError: ``key`` does not name an architecture of the space.
        """

    def evaluate(self, answer: Sequence[int]) -> Evaluation:
        """Look the answer up: accuracy (percent), reported accuracy, rank and the other fields of its entry."""
        key = self.key(answer)
        entry = self._table[key]
        info = {k: v for k, v in entry.items() if k not in (self.acc_field, self.report_field)}
        return Evaluation(
            acc=float(entry[self.acc_field]),
            report_acc=float(entry[self.report_field]),
            rank=int(self._ranks[key]),
            info=info,
        )

    def all_keys(self) -> list[str]:
        """Every table key, in file order."""
        return list(self._table)

    def best(self) -> tuple[Answer, Evaluation]:
        """The entry with the highest reported accuracy."""
        key = max(self._table, key=lambda k: self._table[k][self.report_field])
        answer = self.decode(key)
        return answer, self.evaluate(answer)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "table": str(self.path), "rank_mode": self.rank_mode}


class MacroBenchSpace(TableSpace):
    """NAS-Bench-Macro on CIFAR-10: 8 layers, ops 0 identity, 1 IR(e3, k3), 2 IR(e6, k5); key = the 8 op digits."""

    name = "nas-bench-macro"
    filename = "nas_bench_macro_cifar10.json"
    choices = ((0, 1, 2),) * 8
    acc_field = report_field = "mean_acc"
    required_fields = ("mean_acc",)
    layers = NAS_BENCH_MACRO_LAYERS
    task_prompt = prompts.macro_bench_task(layers)

    def key(self, answer: Sequence[int]) -> str:  # noqa: D102
        return "".join(str(v) for v in self.validate(answer))

    def decode(self, key: str) -> Answer:  # noqa: D102
        if len(key) != self.length or not key.isdigit():
            raise ValueError(f"expected {self.length} digits, got {key!r}")
        return self.validate([int(c) for c in key])


class ChannelBenchSpace(TableSpace):
    """Channel-Bench-Macro (CIFAR-10): 7 widths, 4 choices each; key digit = 1-based index of the chosen width.

    The answer is the 7 channel numbers. :meth:`validate` also accepts the 1-based indices (all values in 1..4,
    which no width equals) and converts them.
    """

    acc_field = report_field = "mean"
    required_fields = ("mean",)
    answer_noun = "channel list"

    def validate(self, values: Sequence[int]) -> Answer:  # noqa: D102
        values = tuple(int(v) for v in values)
        if len(values) == self.length and all(1 <= v <= 4 for v in values):
            values = tuple(c[v - 1] for v, c in zip(values, self.choices, strict=False))
        return super().validate(values)

    def key(self, answer: Sequence[int]) -> str:  # noqa: D102
        return "".join(str(c.index(v) + 1) for v, c in zip(self.validate(answer), self.choices, strict=False))

    def decode(self, key: str) -> Answer:  # noqa: D102
        if len(key) != self.length or any(ch not in "1234" for ch in key):
            raise ValueError(f"expected {self.length} digits in 1..4, got {key!r}")
        return tuple(c[int(ch) - 1] for ch, c in zip(key, self.choices, strict=False))


class ChannelResNetSpace(ChannelBenchSpace):
    """Channel-Bench-Macro, ResNet base."""

    name = "channel-bench-resnet"
    filename = "channel_bench_macro_resnet_cifar10.json"
    choices = ((64, 128, 192, 256),) * 3 + ((128, 256, 384, 512),) * 4
    task_prompt = prompts.channel_task(
        prompts.CHANNEL_RESNET_LAYOUT, prompts.CHANNEL_RESNET_BLOCK, choices, (64, 192, 128, 256, 384, 128, 512)
    )


class ChannelMobileNetSpace(ChannelBenchSpace):
    """Channel-Bench-Macro, MobileNet base."""

    name = "channel-bench-mobilenet"
    filename = "channel_bench_macro_mobilenet_cifar10.json"
    choices = (
        (32, 64, 96, 128),
        (192, 384, 576, 768),
        (192, 384, 576, 768),
        (192, 384, 576, 768),
        (64, 128, 192, 256),
        (384, 768, 1152, 1536),
        (256, 512, 768, 1024),
    )
    task_prompt = prompts.channel_task(
        prompts.CHANNEL_MOBILENET_LAYOUT, prompts.CHANNEL_MOBILENET_BLOCK, choices, (64, 576, 192, 768, 128, 1152, 256)
    )


NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


class NASBench201Space(TableSpace):
    """NAS-Bench-201: a 4-node cell, 6 edges, 5 ops; key = ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.

    The optimiser sees ``val_acc_200``; the report gives ``test_acc_200`` and the table's rank (by test accuracy).

    Args:
        path: the table file or a folder holding it.
        dataset: ``cifar10``, ``cifar100`` or ``imagenet16-120``.
        rank_mode: ``"official"`` (default: the table's ``rank`` field, as the official script reads it) or
            ``"competition"`` (``1 +`` the number of entries with a strictly higher ``test_acc_200``).
    """

    choices = ((0, 1, 2, 3, 4),) * 6
    acc_field = "val_acc_200"
    report_field = "test_acc_200"
    required_fields = ("val_acc_200", "test_acc_200", "rank")
    system_prompt = prompts.NB201_SYSTEM
    task_prompt = prompts.NB201_TASK
    metric_noun = "validation accuracy"
    prompt_decimals = 3  # the official NAS-Bench-201 script feeds back three decimals
    _FILES = {
        "cifar10": "nas_bench_201_cifar10.json",
        "cifar100": "nas_bench_201_cifar100.json",
        "imagenet16-120": "nas_bench_201_imagenet.json",
    }

    def __init__(self, path: str | os.PathLike, dataset: str = "cifar10", rank_mode: str = "official") -> None:
        if dataset not in self._FILES:
            raise ValueError(f"unknown NAS-Bench-201 dataset {dataset!r}; expected one of {list(self._FILES)}")
        self.dataset = dataset
        self.name = f"nas-bench-201-{dataset}"
        self.filename = self._FILES[dataset]
        super().__init__(path, rank_mode=rank_mode)

    def _table_ranks(self, keys: list[str], scores: np.ndarray) -> dict[str, int]:  # noqa: D102
        if self.rank_mode == "official":  # the official script reads the table's own rank
            return {k: int(self._table[k]["rank"]) for k in keys}
        return super()._table_ranks(keys, scores)

    def key(self, answer: Sequence[int]) -> str:  # noqa: D102
        o = [NB201_OPS[v] for v in self.validate(answer)]
        return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"

    def decode(self, key: str) -> Answer:  # noqa: D102
        parts = key.split("+")
        expected_sources = ([0], [0, 1], [0, 1, 2])
        if len(parts) != 3:
            raise ValueError(f"expected 3 nodes separated by '+', got {key!r}")
        ids = []
        for part, sources in zip(parts, expected_sources, strict=False):
            edges = [e for e in part.split("|") if e]
            if len(edges) != len(sources):
                raise ValueError(f"node {part!r} should have {len(sources)} edges")
            for edge, src in zip(edges, sources, strict=False):
                op, _, source = edge.partition("~")
                if op not in NB201_OPS or source != str(src):
                    raise ValueError(f"edge {edge!r}: expected <op>~{src} with op in {NB201_OPS}")
                ids.append(NB201_OPS.index(op))
        return tuple(ids)


#: Benchmark names accepted by :func:`load_space` (and ``tenfold search --space``).
SPACES: dict[str, Any] = {
    "nas-bench-macro": MacroBenchSpace,
    "channel-bench-resnet": ChannelResNetSpace,
    "channel-bench-mobilenet": ChannelMobileNetSpace,
    "nas-bench-201-cifar10": functools.partial(NASBench201Space, dataset="cifar10"),
    "nas-bench-201-cifar100": functools.partial(NASBench201Space, dataset="cifar100"),
    "nas-bench-201-imagenet16-120": functools.partial(NASBench201Space, dataset="imagenet16-120"),
}


def load_space(name: str, table: str | os.PathLike, rank_mode: str = "official") -> TableSpace:
    """Open the benchmark ``name`` from its table file (or a folder holding it under the standard file name).

    Args:
        name: one of :data:`SPACES`.
        table: the table file, or a folder with the benchmark files.
        rank_mode: ``"official"`` (default) or ``"competition"``; see the module docstring.

    Raises:
        ValueError: an unknown name or rank mode, or a malformed table.
        FileNotFoundError: the table is missing.
    """
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; expected one of {list(SPACES)}")
    return SPACES[name](table, rank_mode=rank_mode)
