"""Every text GINAS sends to the chat model: system messages, task descriptions, the round message, follow-ups.

The task descriptions carry the information of the official GENIUS prompts (mingkai-zheng/GENIUS) in our own words;
the round message and the follow-ups are described in :mod:`tenfold.nas.ginas`. The spaces
(:mod:`tenfold.nas.spaces`, :mod:`tenfold.nas.macro`) and the loop (:mod:`tenfold.nas.ginas`) take their words
from here and hold none of their own.

The texts are part of every recorded request: :class:`~tenfold.nas.llm.ReplayChat` and ``resume`` compare requests
byte for byte, so a changed word makes earlier transcripts unreplayable. Change them knowingly.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: spaces.py imports this module
    from tenfold.nas.spaces import SearchSpace

__all__ = [
    "CHANNEL_MOBILENET_BLOCK",
    "CHANNEL_MOBILENET_LAYOUT",
    "CHANNEL_RESNET_BLOCK",
    "CHANNEL_RESNET_LAYOUT",
    "DEFAULT_SYSTEM",
    "NB201_SYSTEM",
    "NB201_TASK",
    "channel_task",
    "format_reminder",
    "format_suffix",
    "history_prompt",
    "macro_bench_task",
    "macro_task",
    "repeat_message",
    "round_half_up",
]

#: The system message of the macro and channel benchmarks (and of user spaces).
DEFAULT_SYSTEM = "You are an expert in the field of neural architecture search."


def round_half_up(value: float, decimals: int) -> float:
    """Round like the official scripts: ``Decimal(value).quantize(10**-decimals, ROUND_HALF_UP)``.

    ``Decimal(value)`` takes the exact binary value of the float, so 92.125 rounds up and 92.12499999 does not.
    """
    return float(Decimal(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


# ---------------------------------------------------------------------------------------------------------------
# the round: task, results so far, request, format suffix; and the follow-ups of a round


def format_suffix(answer_noun: str) -> str:
    """The closing instruction on the answer's form (the official 'nothing but the list')."""
    return f"Reply with the {answer_noun} only, and nothing else."


def history_prompt(space: SearchSpace, history: Sequence[tuple[Sequence[int], float]]) -> str:
    """The user message of a round: task, results so far (rounded half up), the request, the format suffix.

    Args:
        space: the search space (its task description, nouns and decimals).
        history: ``(answer, score)`` pairs in evaluation order, the score being what the optimiser sees.
    """
    text = space.task_prompt
    if history:
        d = space.prompt_decimals
        lines = "".join(
            f"{space.format_answer(a)}: {space.metric_noun} {round_half_up(acc, d):.{d}f}%\n" for a, acc in history
        )
        text += (
            f"\nThese architectures have been trained and measured so far; use them as a reference:\n{lines}"
            f"Suggest a new {space.answer_noun} that should reach a higher {space.metric_noun} than every result "
            "above.\n"
        )
    return text + space.format_suffix


def repeat_message(space: SearchSpace, answer: Sequence[int], acc: float) -> str:
    """The follow-up to a proposal measured before (score ``acc``, in percent): its score, and a request for another."""
    d = space.prompt_decimals
    return (
        f"{space.format_answer(answer)} has already been measured: {space.metric_noun} "
        f"{round_half_up(acc, d):.{d}f}%. Suggest a different {space.answer_noun}, one not measured yet, that should "
        f"do better. {space.format_suffix}"
    )


def format_reminder(space: SearchSpace) -> str:
    """What follows the problem in the follow-up to an invalid reply: the answer's form, with an example."""
    example = space.format_answer([c[0] for c in space.choices])
    return (
        f"Reply with one list of exactly {space.length} numbers, each from the allowed values, in the form "
        f"{example}. {space.format_suffix}"
    )


# ---------------------------------------------------------------------------------------------------------------
# macro spaces: NAS-Bench-Macro's table and the real-training spaces of tenfold.nas.macro

_MACRO_OPS = (
    "0: Identity. The input passes through unchanged; where the layer changes the channel count or has stride "
    "2, it is a 1x1 convolution with that stride{no_bias} followed by BatchNorm instead.\n"
    "1: Inverted residual block with expansion 3 and kernel size 3: a 1x1 convolution widening to "
    "3 x in_channels, BatchNorm, ReLU; a 3x3 depthwise convolution with the layer's stride, BatchNorm, ReLU; a "
    "1x1 convolution to out_channels, BatchNorm. The input is added to the output when the stride is 1 and "
    "in_channels == out_channels.\n"
    "2: Inverted residual block as in 1, with expansion 6 and kernel size 5{depthwise}.\n"
)


def _macro_task(
    layers: Sequence[Sequence[int]],
    *,
    data: str,
    count: str,
    layout_note: str,
    stem: str,
    head: str,
    detailed: bool,
    answer: str,
) -> str:
    """The macro task: the data, the stem, the searchable layers, the head, the 3 operations, the answer's form.

    ``detailed`` adds the benchmark's particulars to the operations (no bias; the 5x5 depthwise kernel).
    """
    n = len(layers)
    rows = "".join(
        f"- layer{i + 2}: {c_in} -> {c_out} channels, stride {s}{' (downsampling)' if s == 2 else ''}\n"
        for i, (c_in, c_out, s) in enumerate(layers)
    )
    ops = _MACRO_OPS.format(no_bias=" (no bias)" if detailed else "",
                            depthwise=" (a 5x5 depthwise convolution)" if detailed else "")  # fmt: skip
    return (
        f"Help me choose the operations of an image classifier. It is trained and {data}.\n\n"
        f"The network has a fixed stem, {count} layers to choose (layer2 to layer{n + 1}) and a fixed head"
        f"{layout_note}:\n- layer1 (fixed): 3x3 convolution, 3 -> {stem}\n{rows}{head}\n"
        f"Each of layer2..layer{n + 1} takes one of 3 operations:\n{ops}\n"
        f"Give the operation of each of the {n} layers {answer}\n"
    )


def macro_bench_task(layers: Sequence[Sequence[int]]) -> str:
    """The task of NAS-Bench-Macro's table (CIFAR-10) for its 8 searchable ``(in, out, stride)`` layers.

    The benchmark's network is described to the letter: padding and bias of the convolutions, the head as three
    fixed layers (1x1 convolution to 1280 channels, pooling, a 10-way classifier) and a worked example answer.
    """
    n, example = len(layers), [1, 2, 0, 0, 1, 1, 2, 0]
    return _macro_task(
        layers,
        data="tested on CIFAR-10 (32x32 colour images, 10 classes), and the goal is the highest test accuracy on "
        "CIFAR-10",
        count="eight",
        layout_note=". Channel counts and strides are fixed",
        stem=f"{layers[0][0]} channels, padding 1, no bias",
        head=f"- layer{n + 2} (fixed): 1x1 convolution, {layers[-1][1]} -> 1280 channels, no bias\n"
        f"- layer{n + 3} (fixed): global average pooling\n"
        f"- layer{n + 4} (fixed): fully connected layer, 1280 -> 10\n",
        detailed=True,
        answer=f"layer2..layer{n + 1} as a list of {n} operation IDs, in layer order. For example {example} means "
        f"operation {example[0]} for layer2, operation {example[1]} for layer3, ..., operation {example[-1]} for "
        f"layer{n + 1}.",
    )


def macro_task(layers: Sequence[Sequence[int]], stem_chs: int, head_chs: int, dataset: str) -> str:
    """The task of a macro space with these layers, trained on ``dataset`` (the benchmark prompt's content).

    Args:
        layers: ``(in, out, stride)`` per searchable layer.
        stem_chs: stem width.
        head_chs: head 1x1 convolution width.
        dataset: what the model is trained on, in words.
    """
    n = len(layers)
    return _macro_task(
        layers,
        data=f"evaluated on {dataset}, and the goal is the highest accuracy",
        count=str(n),
        layout_note="",
        stem=f"{stem_chs} channels, BatchNorm, ReLU",
        head=f"- head (fixed): 1x1 convolution {layers[-1][1]} -> {head_chs} channels, global average pooling, a "
        "fully connected classifier\n",
        detailed=False,
        answer=f"as a list of {n} operation IDs, in layer order, e.g. [{', '.join(str(i % 3) for i in range(n))}].",
    )


# ---------------------------------------------------------------------------------------------------------------
# Channel-Bench-Macro


def channel_task(layout: str, block: str, options: Sequence[Sequence[int]], example: Sequence[int]) -> str:
    """The task of a Channel-Bench-Macro table: the layout, its block, the allowed widths, an example answer.

    Args:
        layout: the network layer by layer (:data:`CHANNEL_RESNET_LAYOUT`, :data:`CHANNEL_MOBILENET_LAYOUT`).
        block: what the layout's block is (:data:`CHANNEL_RESNET_BLOCK`, :data:`CHANNEL_MOBILENET_BLOCK`).
        options: the allowed widths of each of the 7 entries.
        example: an example answer (7 widths).
    """
    opts = "\n".join(f"- channels[{i}]: {', '.join(map(str, o))}" for i, o in enumerate(options))
    ex = ", ".join(map(str, example))
    return (
        "Help me choose the channel numbers of an image classifier. It is trained and tested on CIFAR-10 (32x32 "
        "colour images, 10 classes), and the goal is the highest test accuracy on CIFAR-10.\n\n"
        f"The network, layer by layer, with its widths taken from a list `channels` of 7 numbers:\n{layout}\n"
        f"{block}\n"
        f"Allowed values of each entry of `channels`:\n{opts}\n\n"
        "Choose the 7 channel numbers, each from its allowed values, to make the accuracy on CIFAR-10 as high as "
        f"possible. Give them as a list of 7 numbers in index order, e.g. [{ex}].\n"
    )


CHANNEL_RESNET_LAYOUT = """\
- layer1: 3x3 convolution, 3 -> channels[0], padding 1, no bias
- layer2: Bottleneck(in=channels[0], mid=channels[1], out=channels[0], stride=1)
- layer3: Bottleneck(in=channels[0], mid=channels[2], out=channels[0], stride=1)
- layer4: Bottleneck(in=channels[0], mid=channels[3], out=channels[4], stride=2)
- layer5: Bottleneck(in=channels[4], mid=channels[5], out=channels[4], stride=1)
- layer6: Bottleneck(in=channels[4], mid=channels[6], out=channels[4], stride=1)
- layer7: global average pooling
- layer8: fully connected layer, channels[4] -> 10
"""
CHANNEL_RESNET_BLOCK = """\
Bottleneck(in, mid, out, stride) is a residual block: a 3x3 convolution in -> mid with the given stride (padding 1, \
no bias), BatchNorm, ReLU, a 3x3 convolution mid -> out (stride 1, padding 1, no bias), BatchNorm. When the stride is \
1 the block's input is added to this result; a ReLU follows in both cases.
"""
CHANNEL_MOBILENET_LAYOUT = """\
- layer1: 3x3 convolution, 3 -> channels[0], padding 1, no bias
- layer2: InvertedResidual(in=channels[0], mid=channels[1], out=channels[0], stride=1)
- layer3: InvertedResidual(in=channels[0], mid=channels[2], out=channels[0], stride=1)
- layer4: InvertedResidual(in=channels[0], mid=channels[3], out=channels[4], stride=2)
- layer5: InvertedResidual(in=channels[4], mid=channels[5], out=channels[4], stride=1)
- layer6: 1x1 convolution, channels[4] -> channels[6], no bias
- layer7: global average pooling
- layer8: fully connected layer, channels[6] -> 10
"""
CHANNEL_MOBILENET_BLOCK = """\
InvertedResidual(in, mid, out, stride) is a MobileNetV2 block: a 1x1 convolution in -> mid, BatchNorm, ReLU; a 3x3 \
depthwise convolution on mid channels with the given stride, BatchNorm, ReLU; a 1x1 convolution mid -> out, \
BatchNorm. The block's input is added to the result when the stride is 1 and in == out.
"""


# ---------------------------------------------------------------------------------------------------------------
# NAS-Bench-201

#: NAS-Bench-201's system message (the official script casts the model as a renowned NAS researcher).
NB201_SYSTEM = (
    "You are a world-leading deep-learning researcher, known above all for your work on neural architecture "
    "search: efficient algorithms that explore large spaces of network designs and find architectures that are "
    "accurate on the task at hand while cheap to train and run."
)

NB201_TASK = """\
You are an expert in neural architecture search. Help me design the best neural network cell from a fixed set of \
operations; the goal is the highest accuracy of the network.

The cell has 4 feature maps (nodes) s0, s1, s2, s3 and 6 operations op0..op5 on the edges between them:
- s0 is the cell's input;
- s1 = op0(s0);
- s2 = op1(s0) + op2(s1);
- s3 = op3(s0) + op4(s1) + op5(s2), and s3 is the cell's output, the input of the next cell.

Each of op0..op5 is one of 5 operations, none of which changes the number of channels or the spatial size:
0: zero. Outputs zeros whatever the input, so no information or gradient flows along this edge.
1: skip connection (identity).
2: ReLU, then a 1x1 convolution (stride 1), then BatchNorm.
3: ReLU, then a 3x3 convolution (stride 1, padding 1), then BatchNorm.
4: 3x3 average pooling (stride 1, padding 1).

Think about what each operation does and how gradients flow through the cell from the output back to the earlier \
nodes, then propose the cell that you expect to perform best, whatever its size or cost. I will measure each \
proposal and report the result; do not propose a cell that was already measured.

Give the cell as a list of 6 operation IDs [op0, op1, op2, op3, op4, op5], for example [3, 1, 2, 0, 3, 4].
"""
