"""RmLR: re-mine, learn and reason for two-stage HOI detection, built on the UPT-style baseline.

Paper: Cao et al., "Re-mine, Learn and Reason: Exploring the Cross-modal Semantic Correlations for Language-guided
HOI detection" (ICCV 2023, arXiv 2307.13529). No official code or weights were released; this module follows the
spec ``specs/rmlr.md`` and builds on :mod:`tenfold.hoi.upt` by composition. :class:`RmLR` subclasses
:class:`~tenfold.hoi.upt.UPTBaseline` and adds four switchable parts (constructor flags):

* ``remine`` (:class:`ReMining`): re-mining of pair features from the backbone map. A trainable 1x1 conv turns the
  frozen map into a memory; RoI-align takes an ``s x s`` grid of it in the human, object and union boxes of each pair
  (3 s^2 tokens with learned region/cell embeddings); the pair token (the head's output after the competitive layer)
  is projected into a query that runs ``L_r`` post-norm cross-attention + FFN layers over its own tokens; the result
  ``r_ij`` is fused back: ``v_ij = t_ij + fuse(cat(t_ij, r_ij))``.
* ``align``: sentence- and word-level alignment with multi-positive targets (:func:`sentence_alignment_loss`,
  :func:`word_alignment_loss`) through L2-normalised projections ``phi_s, phi_v, phi_o`` (:class:`TextProjection`).
* ``transfer``: sentence- and word-level knowledge transfer (:func:`knowledge_transfer_loss`).
* ``reason`` (:class:`KnowledgeReasoning`): each pair reads the HOI-sentence bank of its object class by
  cross-attention, ``a_ij = LayerNorm(v_ij + k_ij)``, optionally one self-attention layer over the image's pairs
  (the "interactive relation module"), and adds the knowledge logits to the visual ones.

Total loss (five terms, spec 2.8): ``L = L_focal + l_sa L_sa + l_wa L_wa + l_skt L_skt + l_wkt L_wkt``; only the
terms of enabled parts are added. With every flag off, the model's outputs and loss equal the baseline's exactly:
the same ``interaction_head`` runs, with no extra operation, and the state dict is the baseline's.

Design decisions ([D] in the spec, the paper's choice could not be read):

* Re-mining cross-attends to RoI-aligned grids of the three boxes rather than to the whole map: the memory of every
  pair is then a fixed-size local set (batched without padding) and still sees the interaction region. There is no
  pair self-attention inside re-mining: the competitive layer before it already mixes the pairs of an image. Boxes
  are in input pixels; ``spatial_scale`` maps them to the feature map (ResNet C5: 1/32).
* The fused feature keeps the pair-token size (``2 d_p``) so the UPT classifier ``box_pair_predictor`` scores it
  unchanged; the residual form keeps the baseline path and lets the new path start from standard initialisation.
* Multi-positive targets: a matched pair's positive HOI classes are the ``(verb, object)`` classes of the text
  vocabulary whose verb is in its label set and whose object is the pair's (detected) object class. Only pairs with
  at least one positive take part. Sentence alignment is a soft-target cross-entropy with ``q = 1/|P|`` on the
  positives, restricted to the sentences of the pair's object ("known object", switchable); word alignment uses
  the same soft-target form over verbs, plus a cross-entropy over object words. No pair-versus-pair contrast, so
  two pairs sharing a sentence are never negatives of each other (the many-to-many problem).
* Logit scale ``1/tau`` is learnable (init 1/0.07, clamped at 100, as CLIP) unless ``learn_temperature=False``.
* Knowledge transfer is the spec's cosine form: ``1 - cos(phi_s(v), normalize(mean_{c in P} T_s[c]))`` and
  ``1 - cos(phi_v(v), normalize(mean_{y_v=1} T_v[v])) + 1 - cos(phi_o(v), T_o[o])``.
* Reasoning adds a knowledge classifier to the visual one (``s = box_pair_predictor(v) + knowledge_predictor(a)``)
  so that the UPT head stays the main classifier; pairs whose object has no sentence read nothing (``k = 0``).
* Text tables are given by the caller (:class:`TextKnowledge`, e.g. from :func:`tenfold.hoi.text.build_text_knowledge`)
  and kept as non-persistent buffers: they are constants, not weights. Raw MiniLM sentence embeddings of different
  HOIs are very similar (shared template); :meth:`TextKnowledge.centered` subtracts the class mean and re-normalises.
* New modules are top-level children of :class:`RmLR` (``remining``, ``projection``, ``reasoning``, ``logit_scale``)
  so that ``interaction_head.*`` stays exactly UPT's and loads official UPT weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from tenfold.hoi.upt import (
    Detections,
    FeedForwardNetwork,
    HOIDetections,
    InteractionHead,
    InteractionHeadOutput,
    TransformerEncoderLayer,
    UPTBaseline,
    interaction_loss,
    pair_labels,
    postprocess,
)

__all__ = [
    "KnowledgeReasoning",
    "ReMining",
    "RmLR",
    "RmLRLosses",
    "RmLRPairs",
    "TextKnowledge",
    "TextProjection",
    "hoi_targets",
    "knowledge_transfer_loss",
    "sentence_alignment_loss",
    "soft_target_cross_entropy",
    "word_alignment_loss",
]


# ----------------------------------------------------------------------------------------------------------------
# Text knowledge
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextKnowledge:
    """Frozen text embeddings of the HOI vocabulary (spec 2.5).

    Attributes:
        sentences: (C, d_t) one embedding per HOI class (``"a photo of a person riding a horse"``).
        verbs: (K, d_t) verb-phrase embeddings, indexed like the verb classes.
        objects: (O, d_t) object-word embeddings, indexed like the detector's object labels.
        hoi_verb: (C,) int64 verb of each HOI class.
        hoi_object: (C,) int64 object label of each HOI class.
    """

    sentences: Tensor
    verbs: Tensor
    objects: Tensor
    hoi_verb: Tensor
    hoi_object: Tensor

    def __post_init__(self) -> None:
        """Check shapes and index ranges; raise ValueError naming the bad field."""
        for name in ("sentences", "verbs", "objects"):
            t = getattr(self, name)
            if t.dim() != 2 or not t.dtype.is_floating_point:
                raise ValueError(f"{name} must be a float (N, d_t) tensor, got {t.dtype} {tuple(t.shape)}")
        d = self.sentences.shape[1]
        if self.verbs.shape[1] != d or self.objects.shape[1] != d:
            raise ValueError(
                f"text dimensions differ: sentences {d}, verbs {self.verbs.shape[1]}, objects {self.objects.shape[1]}"
            )
        c = self.sentences.shape[0]
        for name, table in (("hoi_verb", self.verbs), ("hoi_object", self.objects)):
            idx = getattr(self, name)
            if idx.shape != (c,) or idx.dtype.is_floating_point:
                raise ValueError(f"{name} must be an integer ({c},) tensor, got {idx.dtype} {tuple(idx.shape)}")
            if c and (idx.min() < 0 or idx.max() >= len(table)):
                raise ValueError(f"{name} values must lie in [0, {len(table)}), got {idx.unique().tolist()}")

    @property
    def dim(self) -> int:
        """Text dimension d_t."""
        return self.sentences.shape[1]

    def centered(self) -> TextKnowledge:
        """Each table minus its mean over classes, re-normalised to unit length.

        Spec 7: MiniLM sentences of different HOIs share the template, so their raw cosine similarities are all high.
        """

        def c(t: Tensor) -> Tensor:
            return F.normalize(t - t.mean(0, keepdim=True), dim=-1)

        return TextKnowledge(c(self.sentences), c(self.verbs), c(self.objects), self.hoi_verb, self.hoi_object)


# ----------------------------------------------------------------------------------------------------------------
# Loss terms (pure functions)
# ----------------------------------------------------------------------------------------------------------------


def hoi_targets(labels: Tensor, objects: Tensor, hoi_verb: Tensor, hoi_object: Tensor) -> Tensor:
    """Multi-hot positive HOI classes (M, C): ``P[m, c] = labels[m, verb(c)] and object(c) == objects[m]``.

    Args:
        labels: (M, K) binary verb targets of the pairs.
        objects: (M,) object label of each pair.
        hoi_verb: (C,) verb of each HOI class.
        hoi_object: (C,) object label of each HOI class.
    """
    return labels[:, hoi_verb].bool() & (objects.unsqueeze(1) == hoi_object.unsqueeze(0))


def soft_target_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over rows of ``-sum_c q_c log softmax(z)_c`` with ``q = targets / targets.sum(-1)`` (multi-positive CE).

    Args:
        logits: (M, C) logits.
        targets: (M, C) non-negative weights; every row needs a positive sum.
        mask: (M, C) bool, classes taking part in the softmax (default all). Targets must be zero outside it.

    Returns:
        Scalar loss (0 with a graph for M = 0).

    Raises:
        ValueError: On mismatched shapes or a row without positive target.
    """
    if logits.shape != targets.shape or (mask is not None and mask.shape != logits.shape):
        raise ValueError(f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask must match")
    if len(logits) == 0:
        return logits.sum() * 0
    q = targets.to(logits.dtype)
    total = q.sum(-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("every row of targets needs at least one positive entry")
    if mask is not None:
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return -(q / total * logits.log_softmax(-1)).sum(-1).mean()


def sentence_alignment_loss(logits: Tensor, positives: Tensor, mask: Tensor | None = None) -> Tensor:
    """L_sa: soft-target cross-entropy of pair-to-sentence logits against the pair's positive HOI set (spec 2.6).

    ``L = mean_m -sum_{c in P_m} (1/|P_m|) log softmax_c(z_m)`` over the pairs with a non-empty ``P_m``; other
    sentences of true interactions of the pair are therefore not negatives (many-to-many matching).

    Args:
        logits: (M, C) ``scale * phi_s(v) . T_s^T``.
        positives: (M, C) bool, :func:`hoi_targets`.
        mask: (M, C) bool, sentences in the softmax (known-object restriction); default all.
    """
    keep = positives.any(1)
    return soft_target_cross_entropy(logits[keep], positives[keep], None if mask is None else mask[keep])


def word_alignment_loss(verb_logits: Tensor, verb_labels: Tensor, object_logits: Tensor, objects: Tensor) -> Tensor:
    """L_wa: multi-positive soft-target CE over verb words plus CE over object words (spec 2.6).

    Args:
        verb_logits: (M, K) ``scale * phi_v(v) . T_v^T`` of matched pairs.
        verb_labels: (M, K) binary verb targets, each row with a positive.
        object_logits: (M, O) ``scale * phi_o(v) . T_o^T``.
        objects: (M,) object label of each pair.
    """
    if len(verb_logits) == 0:
        return verb_logits.sum() * 0 + object_logits.sum() * 0
    return soft_target_cross_entropy(verb_logits, verb_labels) + F.cross_entropy(object_logits, objects)


def knowledge_transfer_loss(embeddings: Tensor, positives: Tensor, table: Tensor) -> Tensor:
    """Mean ``1 - cos(e_m, normalize(mean_{c: P[m, c]} T[c]))`` (spec 2.6, L_skt and each half of L_wkt).

    Args:
        embeddings: (M, d_t) projected pair features.
        positives: (M, C) bool or {0, 1}; each row needs a positive.
        table: (C, d_t) text embeddings.
    """
    if len(embeddings) == 0:
        return embeddings.sum() * 0
    p = positives.to(table.dtype)
    target = F.normalize(p @ table / p.sum(1, keepdim=True), dim=-1)
    return (1 - F.cosine_similarity(embeddings, target, dim=-1)).mean()


class RmLRLosses(NamedTuple):
    """The five loss terms (unweighted) and their weighted total; disabled terms are zero."""

    total: Tensor
    focal: Tensor
    sentence_alignment: Tensor
    word_alignment: Tensor
    sentence_transfer: Tensor
    word_transfer: Tensor


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------


class _CrossAttentionLayer(nn.Module):
    """Post-norm ``q = LN(q + Dropout(MHA(q, m, m)))`` then the post-norm FFN of :mod:`tenfold.hoi.upt`."""

    def __init__(self, hidden_size: int, num_heads: int, dropout_prob: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout_prob, batch_first=True)
        self.dropout = nn.Dropout(dropout_prob)
        self.norm = nn.LayerNorm(hidden_size)
        self.ffn = FeedForwardNetwork(hidden_size, hidden_size * 4, dropout_prob)

    def forward(self, q: Tensor, memory: Tensor) -> Tensor:
        m, _ = self.attention(q, memory, memory, need_weights=False)
        return self.ffn(self.norm(q + self.dropout(m)))


class ReMining(nn.Module):
    """Re-mining of pair features from the backbone map (spec 2.4; the layer is a design decision, see module doc).

    Args:
        num_channels: Channels C of the backbone map.
        pair_size: Size of the head's pair tokens (``2 d_p``).
        hidden_size: Width d_r of the memory and queries (spec 256).
        num_layers: Cross-attention layers L_r (spec 2).
        num_heads: Attention heads (spec 8).
        roi_size: RoI-align grid side s per box.
        spatial_scale: Feature-map cells per input pixel (ResNet C5: 1/32).
        dropout_prob: Dropout of attention and FFN.
    """

    def __init__(
        self,
        num_channels: int,
        pair_size: int,
        *,
        hidden_size: int = 256,
        num_layers: int = 2,
        num_heads: int = 8,
        roi_size: int = 4,
        spatial_scale: float = 1 / 32,
        dropout_prob: float = 0.1,
    ) -> None:
        """Build the feature extractor, region embeddings, cross-attention layers and fusion."""
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        if roi_size < 1 or spatial_scale <= 0:
            raise ValueError(f"need roi_size >= 1 and spatial_scale > 0, got {roi_size} and {spatial_scale}")
        self.roi_size = roi_size
        self.spatial_scale = spatial_scale
        self.input_proj = nn.Conv2d(num_channels, hidden_size, 1)
        self.region_embed = nn.Parameter(torch.randn(3, roi_size * roi_size, hidden_size) * 0.02)
        self.query_proj = nn.Linear(pair_size, hidden_size)
        self.layers = nn.ModuleList(
            [_CrossAttentionLayer(hidden_size, num_heads, dropout_prob) for _ in range(num_layers)]
        )
        self.fuse = nn.Linear(pair_size + hidden_size, pair_size)

    def forward(
        self, features: Tensor, boxes_h: Tensor, boxes_o: Tensor, batch_idx: Tensor, pair_tokens: Tensor
    ) -> Tensor:
        """Re-mined pair features ``t + fuse(cat(t, r))``.

        Args:
            features: (B, C, H, W) backbone map.
            boxes_h: (M, 4) subject boxes, xyxy input pixels.
            boxes_o: (M, 4) object boxes.
            batch_idx: (M,) image of each pair.
            pair_tokens: (M, pair_size) the head's pair tokens.

        Returns:
            (M, pair_size).
        """
        if len(pair_tokens) == 0:
            return pair_tokens
        memory = self.input_proj(features)
        union = torch.cat(
            [torch.minimum(boxes_h[:, :2], boxes_o[:, :2]), torch.maximum(boxes_h[:, 2:], boxes_o[:, 2:])], 1
        )
        m, s = len(pair_tokens), self.roi_size
        idx = batch_idx.to(memory.dtype).unsqueeze(1)
        rois = torch.cat([torch.cat([idx, b.to(memory.dtype)], 1) for b in (boxes_h, boxes_o, union)])
        grid = roi_align(memory, rois, s, self.spatial_scale, sampling_ratio=2, aligned=True)  # (3M, d, s, s)
        tokens = grid.flatten(2).transpose(1, 2).reshape(3, m, s * s, -1).transpose(0, 1)  # (M, 3, s^2, d)
        tokens = (tokens + self.region_embed).flatten(1, 2)
        q = self.query_proj(pair_tokens).unsqueeze(1)
        for layer in self.layers:
            q = layer(q, tokens)
        return pair_tokens + self.fuse(torch.cat([pair_tokens, q.squeeze(1)], 1))


class TextProjection(nn.Module):
    """Projections ``phi_s, phi_v, phi_o``: 2-layer MLPs from pair features to the text space, L2-normalised."""

    def __init__(self, pair_size: int, text_size: int) -> None:
        """Build the three MLPs (hidden width = ``pair_size``)."""
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(pair_size, pair_size), nn.ReLU(), nn.Linear(pair_size, text_size))

        self.sentence, self.verb, self.object = mlp(), mlp(), mlp()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(M, pair_size) -> unit (M, d_t) sentence, verb and object embeddings."""
        return tuple(F.normalize(f(x), dim=-1) for f in (self.sentence, self.verb, self.object))


def _per_image(layer: TransformerEncoderLayer, x: Tensor, num_pairs: Sequence[int]) -> Tensor:
    """Run a padded self-attention layer over the pairs of each image; (M, D) in, (M, D) out."""
    counts = torch.tensor(list(num_pairs), device=x.device)
    if len(x) == 0:
        return x
    bi = torch.repeat_interleave(torch.arange(len(counts), device=x.device), counts)
    slot = torch.arange(len(x), device=x.device) - (torch.cumsum(counts, 0) - counts)[bi]
    padded = x.new_zeros(len(counts), int(counts.max()), x.shape[1])
    padded[bi, slot] = x
    out, _ = layer(padded, torch.arange(padded.shape[1], device=x.device) < counts.unsqueeze(1))
    return out[bi, slot]


class KnowledgeReasoning(nn.Module):
    """Reasoning with text-augmented features (spec 2.7).

    ``k = W_o MHA(W_q v, W_k T_s, W_v T_s)`` over the sentences allowed for the pair (its object class),
    ``a = LayerNorm(v + k)``, optionally a self-attention layer over the image's pairs, then
    ``knowledge_predictor(a)`` (added to the visual logits by :class:`RmLR`).

    Args:
        pair_size: Pair feature size D.
        text_size: d_t.
        num_classes: K.
        num_heads: Heads of the read-out (spec 8).
        relation_layer: Add the pairwise self-attention layer.
        dropout_prob: Dropout of the relation layer.
    """

    def __init__(
        self, pair_size: int, text_size: int, num_classes: int, *, num_heads: int = 8, relation_layer: bool = True,
        dropout_prob: float = 0.1,
    ) -> None:  # fmt: skip
        """Build the read-out, norm, optional relation layer and classifier."""
        super().__init__()
        if pair_size % num_heads:
            raise ValueError(f"pair_size={pair_size} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(pair_size, pair_size)
        self.key = nn.Linear(text_size, pair_size)
        self.value = nn.Linear(text_size, pair_size)
        self.output = nn.Linear(pair_size, pair_size)
        self.norm = nn.LayerNorm(pair_size)
        self.relation = (
            TransformerEncoderLayer(pair_size, 2 * pair_size, num_heads, dropout_prob) if relation_layer else None
        )
        self.knowledge_predictor = nn.Linear(pair_size, num_classes)

    def forward(self, v: Tensor, bank: Tensor, allowed: Tensor, num_pairs: Sequence[int]) -> Tensor:
        """Knowledge logits (M, K).

        Args:
            v: (M, D) pair features.
            bank: (C, d_t) sentence embeddings.
            allowed: (M, C) bool, sentences each pair may read; a row without any reads nothing.
            num_pairs: Pairs per image (for the relation layer).
        """
        m, d = v.shape
        h = self.num_heads
        q = self.query(v).view(m, h, d // h)
        k = self.key(bank).view(-1, h, d // h)
        w = torch.einsum("mhd,chd->mhc", q, k) / math.sqrt(d // h)
        w = w.masked_fill(~allowed.unsqueeze(1), torch.finfo(w.dtype).min).softmax(-1)
        w = w * allowed.any(1).view(m, 1, 1).to(w.dtype)
        read = torch.einsum("mhc,chd->mhd", w, self.value(bank).view(-1, h, d // h)).reshape(m, d)
        a = self.norm(v + self.output(read))
        if self.relation is not None:
            a = _per_image(self.relation, a, num_pairs)
        return self.knowledge_predictor(a)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


class RmLRPairs(NamedTuple):
    """Head outputs with RmLR's final logits, and the (re-mined) pair features ``v`` (M, D)."""

    output: InteractionHeadOutput
    features: Tensor


class RmLR(UPTBaseline):
    """RmLR on the UPT baseline: re-mining, text alignment, knowledge transfer and reasoning, each switchable.

    With every part off it is :class:`~tenfold.hoi.upt.UPTBaseline` (same outputs, loss and state dict).

    Args:
        head: The UPT :class:`~tenfold.hoi.upt.InteractionHead` (held as ``interaction_head``).
        text: Text tables; required by ``align``, ``transfer`` and ``reason``.
        remine: Enable :class:`ReMining`.
        align: Enable the sentence- and word-level alignment losses.
        transfer: Enable the knowledge-transfer losses.
        reason: Enable :class:`KnowledgeReasoning`.
        remine_size: Re-mining width d_r.
        remine_layers: Re-mining cross-attention layers.
        remine_heads: Re-mining heads.
        roi_size: RoI-align grid side per box.
        spatial_scale: Feature-map cells per input pixel (ResNet C5: 1/32).
        reason_heads: Heads of the knowledge read-out.
        relation_layer: Pairwise self-attention layer after the read-out.
        known_object: Restrict sentence alignment to the sentences of the pair's object class.
        temperature: Initial tau of the alignment logits ``cos / tau``.
        learn_temperature: Learn ``log(1/tau)`` (clamped so that 1/tau <= 100).
        sentence_alignment_weight: lambda_sa.
        word_alignment_weight: lambda_wa.
        sentence_transfer_weight: lambda_skt.
        word_transfer_weight: lambda_wkt.
        **baseline_kwargs: :class:`~tenfold.hoi.upt.UPTBaseline` thresholds and focal settings.

    Raises:
        ValueError: If a text part is on without ``text``, or the text tables do not match the head.
    """

    def __init__(
        self,
        head: InteractionHead,
        *,
        text: TextKnowledge | None = None,
        remine: bool = False,
        align: bool = False,
        transfer: bool = False,
        reason: bool = False,
        remine_size: int = 256,
        remine_layers: int = 2,
        remine_heads: int = 8,
        roi_size: int = 4,
        spatial_scale: float = 1 / 32,
        reason_heads: int = 8,
        relation_layer: bool = True,
        known_object: bool = True,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        sentence_alignment_weight: float = 1.0,
        word_alignment_weight: float = 1.0,
        sentence_transfer_weight: float = 1.0,
        word_transfer_weight: float = 1.0,
        **baseline_kwargs: float,
    ) -> None:
        """Build the enabled parts (see the class docstring)."""
        super().__init__(head, **baseline_kwargs)
        uses_text = [n for n, on in (("align", align), ("transfer", transfer), ("reason", reason)) if on]
        if uses_text and text is None:
            raise ValueError(f"{', '.join(uses_text)}=True needs text=TextKnowledge(...), got text=None")
        if text is not None:
            if len(text.verbs) != head.num_classes:
                raise ValueError(f"text.verbs has {len(text.verbs)} rows, expected num_classes={head.num_classes}")
            if len(text.objects) != len(head.correspondence):
                raise ValueError(
                    f"text.objects has {len(text.objects)} rows, expected one per object label "
                    f"({len(head.correspondence)})"
                )
            for name in ("sentences", "verbs", "objects", "hoi_verb", "hoi_object"):
                self.register_buffer(f"text_{name}", getattr(text, name).clone(), persistent=False)
        if temperature <= 0:
            raise ValueError(f"temperature={temperature!r} must be > 0")
        self.remine, self.align, self.transfer, self.reason = remine, align, transfer, reason
        self.known_object = known_object
        self.weights = {
            "sentence_alignment": sentence_alignment_weight,
            "word_alignment": word_alignment_weight,
            "sentence_transfer": sentence_transfer_weight,
            "word_transfer": word_transfer_weight,
        }
        pair_size = 2 * head.representation_size
        num_channels = head.mbf_g.fc_1[0].in_features
        if remine:
            self.remining = ReMining(
                num_channels, pair_size, hidden_size=remine_size, num_layers=remine_layers, num_heads=remine_heads,
                roi_size=roi_size, spatial_scale=spatial_scale, dropout_prob=head.comp_layer.ffn.dropout.p,
            )  # fmt: skip
        if align or transfer:
            self.projection = TextProjection(pair_size, text.dim)
        if align:
            init = torch.tensor(math.log(1 / temperature))
            if learn_temperature:
                self.logit_scale = nn.Parameter(init)
            else:
                self.register_buffer("logit_scale", init)
        if reason:
            self.reasoning = KnowledgeReasoning(
                pair_size, text.dim, head.num_classes, num_heads=reason_heads, relation_layer=relation_layer,
                dropout_prob=head.comp_layer.ffn.dropout.p,
            )  # fmt: skip

    def _sentence_mask(self, objects: Tensor) -> Tensor:
        """(M, C) bool: the HOI sentences of each pair's object class."""
        return objects.unsqueeze(1) == self.text_hoi_object.unsqueeze(0)

    def forward_pairs(self, features: Tensor, image_sizes: Tensor, proposals: Sequence[Detections]) -> RmLRPairs:
        """Run the head and the enabled re-mining/reasoning parts on filtered proposals.

        Returns:
            :class:`RmLRPairs`; its ``output.logits`` are the final verb logits.
        """
        out = self.interaction_head(features, image_sizes, proposals)
        v = out.pair_tokens
        if not (self.remine or self.reason):
            return RmLRPairs(out, v)
        if self.remine:
            counts = torch.tensor([len(p) for p in proposals], device=v.device)
            npairs = torch.tensor(out.num_pairs, device=v.device)
            bi = torch.repeat_interleave(torch.arange(len(proposals), device=v.device), npairs)
            offset = (torch.cumsum(counts, 0) - counts)[bi]
            boxes = torch.cat([p.boxes for p in proposals]).to(v)
            v = self.remining(features, boxes[offset + out.pair_h], boxes[offset + out.pair_o], bi, v)
        logits = self.interaction_head.box_pair_predictor(v)
        if self.reason:
            logits = logits + self.reasoning(
                v, self.text_sentences.to(v), self._sentence_mask(out.objects), out.num_pairs
            )
        return RmLRPairs(out._replace(logits=logits), v)

    def loss_terms(
        self, pairs: RmLRPairs, proposals: Sequence[Detections], targets: Sequence[Mapping[str, Tensor]]
    ) -> RmLRLosses:
        """The five loss terms and their weighted total (spec 2.8).

        Args:
            pairs: :meth:`forward_pairs` output (training mode).
            proposals: The proposals it ran on.
            targets: Per image ``"boxes"`` (G, 4) and ``"hoi"`` (P, 3) rows (human, object, verb).
        """
        out = pairs.output
        labels = pair_labels(out, proposals, targets, self.fg_iou_thresh)
        focal = interaction_loss(out.logits, out.prior, labels, self.alpha, self.gamma)
        zero = focal.new_zeros(())
        terms = dict.fromkeys(self.weights, zero)
        if self.align or self.transfer:
            positives = hoi_targets(labels, out.objects, self.text_hoi_verb, self.text_hoi_object)
            keep = positives.any(1)
            e_s, e_v, e_o = self.projection(pairs.features[keep])
            pos, y, obj = positives[keep], labels[keep], out.objects[keep]
            t_s, t_v, t_o = (self.text_sentences.to(e_s), self.text_verbs.to(e_s), self.text_objects.to(e_s))
            if self.align:
                scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
                mask = self._sentence_mask(obj) if self.known_object else None
                terms["sentence_alignment"] = sentence_alignment_loss(scale * e_s @ t_s.T, pos, mask)
                terms["word_alignment"] = word_alignment_loss(scale * e_v @ t_v.T, y, scale * e_o @ t_o.T, obj)
            if self.transfer:
                terms["sentence_transfer"] = knowledge_transfer_loss(e_s, pos, t_s)
                terms["word_transfer"] = knowledge_transfer_loss(e_v, y, t_v) + knowledge_transfer_loss(
                    e_o, F.one_hot(obj, len(t_o)), t_o
                )
        total = focal
        enabled = {"sentence_alignment": self.align, "word_alignment": self.align}
        enabled |= {"sentence_transfer": self.transfer, "word_transfer": self.transfer}
        for name, on in enabled.items():
            if on:
                total = total + self.weights[name] * terms[name]
        return RmLRLosses(total, focal, **terms)

    def forward(
        self,
        features: Tensor,
        image_sizes: Tensor,
        detections: Sequence[Detections],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> Tensor | list[HOIDetections]:
        """Training (``targets`` given): the total loss; otherwise the scored interactions per image.

        Args:
            features: (B, C, H, W) backbone feature map.
            image_sizes: (B, 2) image (height, width).
            detections: Raw detector outputs per image (filtered here).
            targets: Per image ``"boxes"`` (G, 4) xyxy pixels and ``"hoi"`` (P, 3) (human, object, verb) rows.

        Returns:
            The scalar loss (:meth:`loss_terms` ``.total``), or one :class:`~tenfold.hoi.upt.HOIDetections` per image.
        """
        props = self.proposals(detections)
        pairs = self.forward_pairs(features, image_sizes, props)
        if targets is None:
            return postprocess(pairs.output, props)
        return self.loss_terms(pairs, props, targets).total
