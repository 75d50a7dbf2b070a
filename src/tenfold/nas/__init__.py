"""Architecture search: GINAS (a chat LLM as the optimiser, arXiv:2304.10970) with baselines, and ScaleNet.

* :mod:`tenfold.nas.spaces`: benchmark tables (NAS-Bench-Macro, Channel-Bench-Macro, NAS-Bench-201) read from a
  user path; :mod:`tenfold.nas.prompts`: every text sent to the chat model (the spaces' task descriptions, the
  round message, the follow-ups).
* :mod:`tenfold.nas.llm`: chat backends (any OpenAI-compatible endpoint, replay of a transcript, a human at the
  console) and the transcript.
* :mod:`tenfold.nas.ginas`: the GINAS loop; :mod:`tenfold.nas.baselines`: random search, regularised evolution,
  local search.
* :mod:`tenfold.nas.macro`: a NAS-Bench-Macro-style space scored by training its networks
  (:class:`tenfold.models.nas_macro.MacroNet`, timm's ``nas_macro_cifar``).
* ScaleNet (arXiv:2207.07267): :mod:`tenfold.nas.scalenet` (space, super-supernet, sampler, FLOPs, proxy
  evaluator), :mod:`tenfold.nas.scalenet_search` (joint base GA / scaling grid search),
  :mod:`tenfold.nas.scalenet_task` (Lightning training of the super-supernet); the found networks are
  :class:`tenfold.models.scalenet.ScaleNetModel` (timm's ``scalenet_searched``).
* :mod:`tenfold.nas.cli`: ``tenfold search`` (benchmark tables, and ``--space scalenet``).
"""

from __future__ import annotations

from tenfold.nas.baselines import BASELINES, local_search, random_search, regularized_evolution
from tenfold.nas.ginas import GINAS, parse_answer
from tenfold.nas.llm import ChatBackend, ChatError, ConsoleChat, OpenAIChat, ReplayChat, Transcript, chat_from_env
from tenfold.nas.result import SearchRecord, SearchResult, summarize
from tenfold.nas.spaces import SPACES, Evaluation, SearchSpace, TableSpace, load_space

__all__ = [
    "BASELINES",
    "GINAS",
    "SPACES",
    "ChatBackend",
    "ChatError",
    "ConsoleChat",
    "Evaluation",
    "OpenAIChat",
    "ReplayChat",
    "SearchRecord",
    "SearchResult",
    "SearchSpace",
    "TableSpace",
    "Transcript",
    "chat_from_env",
    "load_space",
    "local_search",
    "parse_answer",
    "random_search",
    "regularized_evolution",
    "summarize",
]
