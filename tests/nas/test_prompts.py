"""The prompt texts are pinned: a changed byte would stop earlier transcripts from replaying or resuming."""

from __future__ import annotations

import hashlib

import pytest

from tenfold.nas import prompts
from tenfold.nas.spaces import SPACES, load_space

DEMO_LAYERS = ((16, 24, 2), (24, 24, 1), (24, 48, 2), (48, 48, 1), (48, 48, 1))

# sha256 (first 16 hex digits) of every text a space sends: system message, first round, a later round (with
# results), the follow-ups to a repeat and to an invalid reply. Recorded when the texts moved to prompts.py; the code
# before the move gives the same digests. Change a text only knowingly, and then update its digest here.
PINNED = {
    "nas-bench-macro": "3babce7e1c3ce201",
    "channel-bench-resnet": "e45d0736435fa6b9",
    "channel-bench-mobilenet": "bcb6d3380cededfc",
    "nas-bench-201-cifar10": "91417a7ed310a7ff",
    "nas-bench-201-cifar100": "91417a7ed310a7ff",
    "nas-bench-201-imagenet16-120": "91417a7ed310a7ff",
    "macro_task": "e2bd079237fdaf05",
}


def _digest(*texts: str) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


def _texts(space) -> str:
    answers = [tuple(c[i % len(c)] for c in space.choices) for i in range(3)]
    history = list(zip(answers, (92.125, 91.49599997884116, 70.0), strict=True))
    return _digest(
        space.system_prompt,
        prompts.history_prompt(space, []),
        prompts.history_prompt(space, history),
        prompts.repeat_message(space, answers[0], 92.125),
        prompts.format_reminder(space),
    )


@pytest.mark.parametrize("name", list(SPACES))
def test_space_prompts_are_pinned(tables, name):
    assert _texts(load_space(name, tables)) == PINNED[name]


def test_macro_task_is_pinned():
    texts = [prompts.macro_task(DEMO_LAYERS, 16, 128, "digits"), prompts.macro_task([(4, 8, 2)], 4, 16, "x")]
    assert _digest(*texts) == PINNED["macro_task"]
