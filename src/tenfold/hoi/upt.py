"""UPT-style two-stage HOI baseline: proposals, pair encodings, interaction head, focal loss and scoring.

Paper: Zhang, Campbell and Gould, "Efficient Two-Stage Detection of Human-Object Interactions with a Novel
Unary-Pairwise Transformer" (CVPR 2022, arXiv 2112.01838). Follows the official code github.com/fredzzhang/upt at
commit 192743045e4c5f6827299fdc15809f5b97ac1b8e (``upt.py``, ``interaction_head.py``, ``ops.py``) and its utility
library github.com/fredzzhang/pocket at bff287098bb73427fd8d5525b2ac9867fb56629d (``pocket/models/transformers.py``).

The stage-one detector is frozen and outside this module: it hands over, per image, its boxes, scores, labels and
the decoder hidden states of the kept queries (:class:`Detections`), plus the backbone's last feature map.

* :func:`prepare_region_proposals`: NMS, score threshold and the human/object count limits.
* :func:`compute_spatial_encodings`: the 36-d box-pair encoding; the interaction head's ``spatial_head`` maps it to
  the box-pair positional embeddings that the paper's cooperative layer uses.
* :class:`InteractionHead`: cooperative layer (:class:`ModifiedEncoder`), multi-branch fusion, competitive layer
  and the verb classifier, with the official parameter names so that an official state dict's ``interaction_head.*``
  keys load with ``strict=True`` (:func:`checkpoint_filter_fn`). Batched over images with padding and masks where
  the official code loops; the outputs are those of the loop.
* :func:`binary_focal_loss_with_logits`, :func:`interaction_loss`, :func:`associate_with_ground_truth`:
  the training objective (alpha 0.5, gamma 0.2 as in the official ``main.py``).
* :func:`postprocess`: interaction score x human score^p x object score^p, restricted to the verbs valid for the
  object class (p = 1.0 in training, 2.8 at inference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

__all__ = [
    "Detections",
    "FeedForwardNetwork",
    "HOIDetections",
    "InteractionHead",
    "InteractionHeadOutput",
    "ModifiedEncoder",
    "ModifiedEncoderLayer",
    "MultiBranchFusion",
    "TransformerEncoderLayer",
    "UPTBaseline",
    "associate_with_ground_truth",
    "binary_focal_loss_with_logits",
    "checkpoint_filter_fn",
    "compute_spatial_encodings",
    "correspondence_mask",
    "interaction_loss",
    "pair_labels",
    "postprocess",
    "prepare_region_proposals",
]


# ----------------------------------------------------------------------------------------------------------------
# Detector-stage containers and proposal filtering
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """Detector outputs of one image.

    Attributes:
        boxes: (N, 4) xyxy boxes in pixels of the network input.
        scores: (N,) detection confidences in [0, 1].
        labels: (N,) int64 object classes (the human class is ``human_idx``, 0 in UPT's 80-class index space).
        hidden_states: (N, D) per-detection features (DETR: last decoder layer, D = 256).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    hidden_states: Tensor

    def __post_init__(self) -> None:
        """Check shapes and dtypes; raise ValueError naming the first bad field."""
        n = self.boxes.shape[0] if self.boxes.dim() == 2 else -1
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (N, 4), got {tuple(self.boxes.shape)}")
        if self.scores.shape != (n,):
            raise ValueError(f"scores must have shape ({n},) to match boxes, got {tuple(self.scores.shape)}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match boxes, got {tuple(self.labels.shape)}")
        if self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {self.labels.dtype}")
        if self.hidden_states.dim() != 2 or self.hidden_states.shape[0] != n:
            raise ValueError(
                f"hidden_states must have shape ({n}, D) to match boxes, got {tuple(self.hidden_states.shape)}"
            )

    def __len__(self) -> int:
        """Number of detections."""
        return self.boxes.shape[0]

    def index(self, idx: Tensor) -> Detections:
        """The detections selected by an index or boolean mask ``idx``."""
        return Detections(self.boxes[idx], self.scores[idx], self.labels[idx], self.hidden_states[idx])

    def to(self, device: torch.device | str) -> Detections:
        """The same detections on ``device``."""
        return Detections(*(t.to(device) for t in (self.boxes, self.scores, self.labels, self.hidden_states)))


def _limit_count(idx_all: Tensor, above: Tensor, scores: Tensor, min_n: int, max_n: int) -> Tensor:
    """Indices of one kind (humans or objects), held between ``min_n`` and ``max_n`` as UPT does.

    ``idx_all`` are the NMS survivors of that kind, ``above`` the ones that also pass the score threshold (both in
    descending score order). Too few above the threshold: the top ``min_n`` of all survivors (threshold ignored);
    too many: the top ``max_n``.
    """
    if min_n <= len(above) <= max_n:
        return above
    order = scores[idx_all].argsort(descending=True, stable=True)
    return idx_all[order[: min_n if len(above) < min_n else max_n]]


def prepare_region_proposals(
    detections: Sequence[Detections],
    *,
    human_idx: int = 0,
    box_score_thresh: float = 0.2,
    min_instances: int = 3,
    max_instances: int = 15,
    nms_thresh: float = 0.5,
) -> list[Detections]:
    """Filter raw detections into the instances the interaction head pairs (UPT ``prepare_region_proposals``).

    Per image: class-wise NMS at IoU ``nms_thresh``; keep scores >= ``box_score_thresh``; if fewer than
    ``min_instances`` humans survive, take the top ``min_instances`` humans among all NMS survivors regardless of
    the threshold, if more than ``max_instances``, the top ``max_instances``; the same rule for objects,
    independently. Humans come first in the output, then objects, each in descending score order.

    Args:
        detections: One :class:`Detections` per image (e.g. DETR post-processed outputs and hidden states).
        human_idx: Label of the human class.
        box_score_thresh: Score threshold (official 0.2).
        min_instances: Minimum number of humans and of objects kept (official 3).
        max_instances: Maximum number of humans and of objects kept (official 15).
        nms_thresh: IoU of the class-wise NMS (official 0.5).

    Returns:
        One :class:`Detections` per image, humans first.

    Raises:
        ValueError: If ``min_instances`` > ``max_instances`` or a threshold is outside [0, 1].
    """
    if not 0 <= min_instances <= max_instances:
        raise ValueError(f"need 0 <= min_instances <= max_instances, got {min_instances} and {max_instances}")
    for name, v in (("box_score_thresh", box_score_thresh), ("nms_thresh", nms_thresh)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}={v!r} is out of range; expected a float in [0, 1]")
    out = []
    for det in detections:
        det = det.index(batched_nms(det.boxes, det.scores, det.labels, nms_thresh))
        passed = det.scores >= box_score_thresh
        is_human = det.labels == human_idx
        keep_h = _limit_count(
            is_human.nonzero().squeeze(1),
            (is_human & passed).nonzero().squeeze(1),
            det.scores,
            min_instances,
            max_instances,
        )
        keep_o = _limit_count(
            (~is_human).nonzero().squeeze(1),
            (~is_human & passed).nonzero().squeeze(1),
            det.scores,
            min_instances,
            max_instances,
        )
        out.append(det.index(torch.cat([keep_h, keep_o])))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Pair geometry
# ----------------------------------------------------------------------------------------------------------------


def _pairwise_iou(b1: Tensor, b2: Tensor) -> Tensor:
    """IoU of corresponding boxes (..., 4) xyxy, torchvision convention (no +1), 0/0 -> NaN as ``box_iou``."""
    lt = torch.maximum(b1[..., :2], b2[..., :2])
    rb = torch.minimum(b1[..., 2:], b2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return inter / (area1 + area2 - inter)


def compute_spatial_encodings(boxes_1: Tensor, boxes_2: Tensor, image_size: Tensor, eps: float = 1e-10) -> Tensor:
    """The 36-d spatial encoding of box pairs (UPT ``ops.compute_spatial_encodings``).

    With c = box centre, (w_k, h_k) = box size, (H, W) = image size:
    ``f = [c1x/W, c1y/H, c2x/W, c2y/H, w1/W, h1/H, w2/W, h2/H, w1h1/(HW), w2h2/(HW), w2h2/(w1h1+eps),
    w1/(h1+eps), w2/(h2+eps), IoU, [c2x>c1x]dx, [c2x<c1x]dx, [c2y>c1y]dy, [c2y<c1y]dy]`` with
    ``dx = |c2x-c1x|/(w1+eps)``, ``dy = |c2y-c1y|/(h1+eps)``; the encoding is ``cat(f, log(f + eps))``.

    Args:
        boxes_1: (..., 4) subject boxes, xyxy pixels.
        boxes_2: (..., 4) object boxes, same shape.
        image_size: (..., 2) or (2,) image (height, width), broadcast against the boxes' leading dimensions.
        eps: Stabiliser (official 1e-10).

    Returns:
        (..., 36) encodings.

    Raises:
        ValueError: If the box shapes differ or do not end in 4.
    """
    if boxes_1.shape != boxes_2.shape or boxes_1.shape[-1:] != (4,):
        raise ValueError(f"boxes must both have shape (..., 4), got {tuple(boxes_1.shape)} and {tuple(boxes_2.shape)}")
    size = image_size.to(boxes_1)
    h, w = size[..., 0], size[..., 1]
    c1x, c1y = (boxes_1[..., 0] + boxes_1[..., 2]) / 2, (boxes_1[..., 1] + boxes_1[..., 3]) / 2
    c2x, c2y = (boxes_2[..., 0] + boxes_2[..., 2]) / 2, (boxes_2[..., 1] + boxes_2[..., 3]) / 2
    w1, h1 = boxes_1[..., 2] - boxes_1[..., 0], boxes_1[..., 3] - boxes_1[..., 1]
    w2, h2 = boxes_2[..., 2] - boxes_2[..., 0], boxes_2[..., 3] - boxes_2[..., 1]
    dx = (c2x - c1x).abs() / (w1 + eps)
    dy = (c2y - c1y).abs() / (h1 + eps)
    f = torch.stack(
        [
            c1x / w,
            c1y / h,
            c2x / w,
            c2y / h,
            w1 / w,
            h1 / h,
            w2 / w,
            h2 / h,
            w1 * h1 / (h * w),
            w2 * h2 / (h * w),
            w2 * h2 / (w1 * h1 + eps),
            w1 / (h1 + eps),
            w2 / (h2 + eps),
            _pairwise_iou(boxes_1, boxes_2),
            (c2x > c1x).to(dx) * dx,
            (c2x < c1x).to(dx) * dx,
            (c2y > c1y).to(dy) * dy,
            (c2y < c1y).to(dy) * dy,
        ],
        dim=-1,
    )
    return torch.cat([f, torch.log(f + eps)], dim=-1)


def correspondence_mask(object_class_to_target_class: Sequence[Sequence[int]], num_classes: int) -> Tensor:
    """Boolean (num_object_classes, num_classes) mask of the verbs valid for each object class.

    Args:
        object_class_to_target_class: For each object class, the list of valid verb (target) classes, as UPT's
            ``object_class_to_target_class`` (HICO-DET: from the 600 HOI definitions).
        num_classes: Number of verb classes K.

    Raises:
        ValueError: On a verb index outside [0, K).
    """
    mask = torch.zeros(len(object_class_to_target_class), num_classes, dtype=torch.bool)
    for o, verbs in enumerate(object_class_to_target_class):
        for v in verbs:
            if not 0 <= int(v) < num_classes:
                raise ValueError(f"object class {o} lists verb {v}, outside [0, {num_classes})")
            mask[o, int(v)] = True
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Building blocks (official names)
# ----------------------------------------------------------------------------------------------------------------


class FeedForwardNetwork(nn.Module):
    """Post-norm FFN ``LayerNorm(x + Dropout(Linear(GELU(Linear(x)))))``, LayerNorm eps 1e-12 (pocket)."""

    def __init__(self, hidden_size: int = 512, intermediate_size: int = 2048, dropout_prob: float = 0.1) -> None:
        """Build the FFN; names ``ffn.{0,2}`` and ``norm`` are pocket's."""
        super().__init__()
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, intermediate_size), nn.GELU(), nn.Linear(intermediate_size, hidden_size)
        )
        self.dropout = nn.Dropout(dropout_prob)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        """(..., hidden) -> (..., hidden)."""
        return self.norm(x + self.dropout(self.ffn(x)))


def _stack_linear(layers: nn.ModuleList) -> tuple[Tensor, Tensor]:
    """Weights (G, out, in) and biases (G, out) of a list of equally shaped Linear layers."""
    return torch.stack([m.weight for m in layers]), torch.stack([m.bias for m in layers])


class MultiBranchFusion(nn.Module):
    """Multi-branch fusion ``ReLU(sum_c fc_3[c](ReLU(fc_1[c](a) * fc_2[c](s))))`` (UPT ``MultiBranchFusion``).

    The official module loops over the ``cardinality`` branches; here the branches run as one batched product.
    """

    def __init__(self, appearance_size: int, spatial_size: int, hidden_state_size: int, cardinality: int) -> None:
        """Build ``cardinality`` branches of width ``hidden_state_size / cardinality``.

        Raises:
            ValueError: If ``hidden_state_size`` is not divisible by ``cardinality``.
        """
        super().__init__()
        if hidden_state_size % cardinality:
            raise ValueError(f"hidden_state_size={hidden_state_size} is not divisible by cardinality={cardinality}")
        self.cardinality = cardinality
        sub = hidden_state_size // cardinality
        self.fc_1 = nn.ModuleList([nn.Linear(appearance_size, sub) for _ in range(cardinality)])
        self.fc_2 = nn.ModuleList([nn.Linear(spatial_size, sub) for _ in range(cardinality)])
        self.fc_3 = nn.ModuleList([nn.Linear(sub, hidden_state_size) for _ in range(cardinality)])

    def forward(self, appearance: Tensor, spatial: Tensor) -> Tensor:
        """Fuse (M, A) or (1, A) appearance with (M, S) spatial features into (M, hidden)."""
        w1, b1 = _stack_linear(self.fc_1)
        w2, b2 = _stack_linear(self.fc_2)
        w3, b3 = _stack_linear(self.fc_3)
        a = torch.einsum("ma,coa->mco", appearance, w1) + b1
        s = torch.einsum("ms,cos->mco", spatial, w2) + b2
        h = F.relu(a * s)
        return F.relu(torch.einsum("mco,cko->mk", h, w3) + b3.sum(0))


class ModifiedEncoderLayer(nn.Module):
    """Cooperative layer of UPT: unary tokens updated with messages conditioned on box-pair embeddings.

    For head k with u = ReLU(unary(x)), p = ReLU(pairwise(E)) split into heads:
    ``a_k(i, j) = softmax_i(attn[k]([u_i; u_j; p_ij]))``, ``m_k(i, j) = message[k](u_i * p_ij)``,
    ``x_j <- LayerNorm(x_j + Dropout(aggregate(ReLU(cat_k sum_i a_k(i, j) m_k(i, j)))))``, then the FFN.
    Batched over images with a validity mask (the softmax over i ignores padded tokens).
    """

    def __init__(
        self, hidden_size: int = 256, representation_size: int = 512, num_heads: int = 8, dropout_prob: float = 0.1
    ) -> None:
        """Build the layer with the official parameter names.

        Raises:
            ValueError: If ``representation_size`` is not divisible by ``num_heads``.
        """
        super().__init__()
        if representation_size % num_heads:
            raise ValueError(f"representation_size={representation_size} is not divisible by num_heads={num_heads}")
        self.sub_repr_size = representation_size // num_heads
        self.hidden_size = hidden_size
        self.representation_size = representation_size
        self.num_heads = num_heads
        self.unary = nn.Linear(hidden_size, representation_size)
        self.pairwise = nn.Linear(representation_size, representation_size)
        self.attn = nn.ModuleList([nn.Linear(3 * self.sub_repr_size, 1) for _ in range(num_heads)])
        self.message = nn.ModuleList([nn.Linear(self.sub_repr_size, self.sub_repr_size) for _ in range(num_heads)])
        self.aggregate = nn.Linear(representation_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout_prob)
        self.ffn = FeedForwardNetwork(hidden_size, hidden_size * 4, dropout_prob)

    def forward(self, x: Tensor, y: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Update unary tokens.

        Args:
            x: (B, N, hidden) unary tokens (padded).
            y: (B, N, N, representation) box-pair embeddings.
            valid: (B, N) bool, real tokens.

        Returns:
            Updated (B, N, hidden) tokens and the attention weights (B, heads, N, N), softmax over dim 2 (i).
        """
        b, n, _ = x.shape
        hd, ld = self.num_heads, self.sub_repr_size
        u = F.relu(self.unary(x)).view(b, n, hd, ld)
        p = F.relu(self.pairwise(y)).view(b, n, n, hd, ld)
        wa, ba = _stack_linear(self.attn)  # (H, 1, 3L), (H, 1)
        wa = wa.squeeze(1)
        logit = (
            torch.einsum("bihl,hl->bih", u, wa[:, :ld]).unsqueeze(2)
            + torch.einsum("bjhl,hl->bjh", u, wa[:, ld : 2 * ld]).unsqueeze(1)
            + torch.einsum("bijhl,hl->bijh", p, wa[:, 2 * ld :])
            + ba.squeeze(1)
        )
        logit = logit.masked_fill(~valid.view(b, n, 1, 1), torch.finfo(logit.dtype).min)
        weights = logit.softmax(dim=1)  # over the sender index i, as the official dim=0 of (N, N, 1)
        wm, bm = _stack_linear(self.message)  # (H, L, L), (H, L)
        msg = torch.einsum("bijhl,hkl->bijhk", u.unsqueeze(2) * p, wm) + bm
        agg = (weights.unsqueeze(-1) * msg).sum(dim=1).reshape(b, n, hd * ld)
        agg = self.dropout(self.aggregate(F.relu(agg)))
        x = self.ffn(self.norm(x + agg))
        return x, weights.permute(0, 3, 1, 2)


class ModifiedEncoder(nn.Module):
    """Stack of :class:`ModifiedEncoderLayer` (UPT ``ModifiedEncoder``; the head uses 2 layers, 8 heads)."""

    def __init__(
        self,
        hidden_size: int = 256,
        representation_size: int = 512,
        num_heads: int = 8,
        num_layers: int = 2,
        dropout_prob: float = 0.1,
    ) -> None:
        """Build ``num_layers`` cooperative layers under the official name ``mod_enc``."""
        super().__init__()
        self.num_layers = num_layers
        self.mod_enc = nn.ModuleList(
            [ModifiedEncoderLayer(hidden_size, representation_size, num_heads, dropout_prob) for _ in range(num_layers)]
        )

    def forward(self, x: Tensor, y: Tensor, valid: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Run every layer; returns the tokens and each layer's attention weights."""
        attn = []
        for layer in self.mod_enc:
            x, w = layer(x, y, valid)
            attn.append(w)
        return x, attn


class _SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with key padding mask (pocket ``SelfAttention``)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout_prob: float) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.sub_hidden_size = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        b, n, d = x.shape
        shape = (b, n, self.num_heads, self.sub_hidden_size)
        q, k, v = self.query(x).view(shape), self.key(x).view(shape), self.value(x).view(shape)
        w = torch.einsum("bphd,bqhd->bhpq", q, k) / math.sqrt(self.sub_hidden_size)
        w = w.masked_fill(~valid.view(b, 1, 1, n), torch.finfo(w.dtype).min).softmax(dim=-1)
        w = self.dropout(w)
        return torch.einsum("bhpq,bqhd->bphd", w, v).reshape(b, n, d), w


class _SelfAttentionOutput(nn.Module):
    """``LayerNorm_{1e-12}(x + Dropout(aggregate(m)))`` (pocket ``SelfAttentionOutput``)."""

    def __init__(self, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.aggregate = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, m: Tensor, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.aggregate(m)))


class _SelfAttentionLayer(nn.Module):
    """Attention plus output block (pocket ``SelfAttentionLayer``; names ``attention``, ``output``)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout_prob: float) -> None:
        super().__init__()
        self.attention = _SelfAttention(hidden_size, num_heads, dropout_prob)
        self.output = _SelfAttentionOutput(hidden_size, dropout_prob)

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        m, w = self.attention(x, valid)
        return self.output(m, x), w


class TransformerEncoderLayer(nn.Module):
    """Post-norm transformer encoder layer over padded token sets (pocket ``TransformerEncoderLayer``).

    UPT's competitive layer: hidden 2 x representation size, 8 heads, FFN width 2048 (pocket's default, not scaled
    with the hidden size), dropout 0.1 on attention weights and outputs. Padded tokens are masked out as keys.
    """

    def __init__(
        self, hidden_size: int = 512, intermediate_size: int = 2048, num_heads: int = 8, dropout_prob: float = 0.1
    ) -> None:
        """Build the layer with pocket's names (``attention.attention.*``, ``attention.output.*``, ``ffn``)."""
        super().__init__()
        self.attention = _SelfAttentionLayer(hidden_size, num_heads, dropout_prob)
        self.ffn = FeedForwardNetwork(hidden_size, intermediate_size, dropout_prob)

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """(B, P, hidden) tokens and (B, P) validity -> updated tokens and weights (B, heads, P, P)."""
        x, w = self.attention(x, valid)
        return self.ffn(x), w


# ----------------------------------------------------------------------------------------------------------------
# Interaction head
# ----------------------------------------------------------------------------------------------------------------


class InteractionHeadOutput(NamedTuple):
    """Outputs of :class:`InteractionHead` over a batch, pairs of all images concatenated in image order.

    Attributes:
        logits: (M, K) verb logits per pair.
        prior: (2, M, K) human and object detection scores raised to the prior power, zero for verbs invalid for
            the pair's object class.
        pair_h: (M,) index of the subject (a human) in its image's proposals.
        pair_o: (M,) index of the object in its image's proposals.
        objects: (M,) object class of each pair.
        num_pairs: per-image pair counts (length B), to split the flat tensors.
        pair_tokens: (M, 2 x representation_size) pair features after the competitive layer.
    """

    logits: Tensor
    prior: Tensor
    pair_h: Tensor
    pair_o: Tensor
    objects: Tensor
    num_pairs: list[int]
    pair_tokens: Tensor


class InteractionHead(nn.Module):
    """UPT interaction head: pairs every human with every other instance and classifies the pairs into verbs.

    Steps (official ``InteractionHead.forward``): box-pair positional embeddings
    ``E = spatial_head(compute_spatial_encodings(b_i, b_j))`` for all n x n pairs; cooperative layer
    (:class:`ModifiedEncoder`, 2 layers) on the unary tokens; pair tokens
    ``cat(mbf(cat(x_i, x_j), E_ij), mbf_g(avgpool(C5), E_ij))`` for i a human, j != i; competitive layer
    (:class:`TransformerEncoderLayer`) over the pairs of each image; ``box_pair_predictor`` gives the logits.

    Parameter names equal the official ones, so ``interaction_head.*`` of an official checkpoint loads strictly
    (HICO-DET: 13,240,837 parameters, 308 tensors). The official per-image loop is replaced by a padded batch;
    outputs are those of the loop.

    Fidelity: the official head permutes humans to the front locally when they are not, yet returns indices into
    the permuted order while UPT indexes the unpermuted boxes with them. This head requires humans first (what
    :func:`prepare_region_proposals` produces) and raises otherwise.

    Args:
        num_classes: Number of verb classes K (HICO-DET 117, V-COCO 24).
        object_class_to_target_class: Valid verbs per object class (see :func:`correspondence_mask`).
        hidden_state_size: Size of the detector tokens (DETR 256).
        representation_size: Pair representation size d_p (512).
        num_channels: Channels of the global feature map (ResNet-50/101 C5: 2048).
        human_idx: Label of the human class.
        train_prior_power: Exponent of the detection scores in the prior in training mode (official 1.0).
        test_prior_power: Exponent in eval mode (official 2.8).
        dropout_prob: Dropout of the cooperative and competitive layers (official 0.1).
    """

    def __init__(
        self,
        num_classes: int,
        object_class_to_target_class: Sequence[Sequence[int]],
        *,
        hidden_state_size: int = 256,
        representation_size: int = 512,
        num_channels: int = 2048,
        human_idx: int = 0,
        train_prior_power: float = 1.0,
        test_prior_power: float = 2.8,
        dropout_prob: float = 0.1,
    ) -> None:
        """Build the head (see the class docstring)."""
        super().__init__()
        self.num_classes = num_classes
        self.human_idx = human_idx
        self.hidden_state_size = hidden_state_size
        self.representation_size = representation_size
        self.train_prior_power = train_prior_power
        self.test_prior_power = test_prior_power
        self.register_buffer(
            "correspondence", correspondence_mask(object_class_to_target_class, num_classes), persistent=False
        )
        self.box_pair_predictor = nn.Linear(representation_size * 2, num_classes)
        self.spatial_head = nn.Sequential(
            nn.Linear(36, 128),
            nn.ReLU(),
            nn.Linear(128, 256),
            nn.ReLU(),
            nn.Linear(256, representation_size),
            nn.ReLU(),
        )
        self.coop_layer = ModifiedEncoder(
            hidden_state_size, representation_size, num_layers=2, dropout_prob=dropout_prob
        )
        self.comp_layer = TransformerEncoderLayer(hidden_size=representation_size * 2, dropout_prob=dropout_prob)
        self.mbf = MultiBranchFusion(hidden_state_size * 2, representation_size, representation_size, cardinality=16)
        self.avg_pool = nn.AdaptiveAvgPool2d(output_size=1)
        self.mbf_g = MultiBranchFusion(num_channels, representation_size, representation_size, cardinality=16)

    def compute_prior_scores(self, scores_h: Tensor, scores_o: Tensor, object_class: Tensor) -> Tensor:
        """(2, M, K) prior: detection scores to the power p (1.0 training, 2.8 eval), zero for invalid verbs."""
        p = self.train_prior_power if self.training else self.test_prior_power
        if object_class.numel() and (object_class.min() < 0 or object_class.max() >= len(self.correspondence)):
            raise ValueError(
                f"object labels must lie in [0, {len(self.correspondence)}), got {object_class.unique().tolist()}"
            )
        valid = self.correspondence[object_class].to(scores_h.dtype)
        return torch.stack([scores_h.pow(p).unsqueeze(1) * valid, scores_o.pow(p).unsqueeze(1) * valid])

    def forward(self, features: Tensor, image_sizes: Tensor, proposals: Sequence[Detections]) -> InteractionHeadOutput:
        """Classify all human-instance pairs of a batch.

        Args:
            features: (B, C, H, W) backbone feature map (C5), averaged into the global feature.
            image_sizes: (B, 2) image (height, width) in pixels, the frame of the proposal boxes.
            proposals: B :class:`Detections`, humans first (see :func:`prepare_region_proposals`).

        Returns:
            :class:`InteractionHeadOutput`.

        Raises:
            ValueError: On a batch size mismatch, a wrong hidden size or humans not listed first.
        """
        bsz = len(proposals)
        if features.shape[0] != bsz or image_sizes.shape != (bsz, 2):
            raise ValueError(
                f"features {tuple(features.shape)} and image_sizes {tuple(image_sizes.shape)} must have "
                f"batch size {bsz} (the number of proposal sets)"
            )
        dev, dtype = features.device, features.dtype
        counts = torch.tensor([len(p) for p in proposals], device=dev)
        n_h = []
        for b, p in enumerate(proposals):
            if p.hidden_states.shape[1] != self.hidden_state_size:
                raise ValueError(
                    f"image {b}: hidden_states have size {p.hidden_states.shape[1]}, "
                    f"expected hidden_state_size={self.hidden_state_size}"
                )
            is_h = p.labels == self.human_idx
            k = int(is_h.sum())
            if not bool(is_h[:k].all()):
                raise ValueError(f"image {b}: humans (label {self.human_idx}) must come first in the proposals")
            n_h.append(k)
        n_max = int(counts.max()) if bsz else 0
        ar = torch.arange(n_max, device=dev)
        valid = ar < counts.unsqueeze(1)  # (B, N)
        boxes = features.new_zeros(bsz, n_max, 4)
        boxes[..., 2:] = 1.0  # padding boxes: finite encodings, masked later
        tokens = features.new_zeros(bsz, n_max, self.hidden_state_size)
        scores = features.new_zeros(bsz, n_max)
        labels = torch.zeros(bsz, n_max, dtype=torch.long, device=dev)
        if n_max:
            boxes[valid] = torch.cat([p.boxes for p in proposals]).to(dtype)
            tokens[valid] = torch.cat([p.hidden_states for p in proposals]).to(dtype)
            scores[valid] = torch.cat([p.scores for p in proposals]).to(dtype)
            labels[valid] = torch.cat([p.labels for p in proposals]).long()

        # Box-pair positional embeddings for all n x n ordered pairs (subject i, object j).
        enc = compute_spatial_encodings(
            boxes.unsqueeze(2).expand(-1, -1, n_max, -1),
            boxes.unsqueeze(1).expand(-1, n_max, -1, -1),
            image_sizes.to(dtype).view(bsz, 1, 1, 2),
        )
        pair_emb = self.spatial_head(enc)  # (B, N, N, R)
        tokens, _ = self.coop_layer(tokens, pair_emb, valid)

        # Pairs (i, j): i a human, j another instance, in the official row-major order; none when n_h = 0 or n <= 1.
        nh = torch.tensor(n_h, device=dev).view(bsz, 1, 1)
        has_pairs = (nh > 0) & (counts.view(bsz, 1, 1) > 1)
        keep = (ar.view(1, -1, 1) < nh) & valid.unsqueeze(1) & (ar.view(1, -1, 1) != ar.view(1, 1, -1)) & has_pairs
        bi, pi, pj = keep.nonzero().unbind(1)
        num_pairs = keep.flatten(1).sum(1)
        emb = pair_emb[bi, pi, pj]
        global_features = self.avg_pool(features).flatten(1)
        pair_tokens = torch.cat(
            [
                self.mbf(torch.cat([tokens[bi, pi], tokens[bi, pj]], dim=1), emb),
                self.mbf_g(global_features[bi], emb),
            ],
            dim=1,
        )
        # Competitive layer over the pairs of each image: pad to (B, P_max).
        p_max = int(num_pairs.max()) if bsz else 0
        slot = torch.arange(len(bi), device=dev) - (torch.cumsum(num_pairs, 0) - num_pairs)[bi]
        padded = pair_tokens.new_zeros(bsz, p_max, pair_tokens.shape[1])
        padded[bi, slot] = pair_tokens
        pair_valid = torch.arange(p_max, device=dev) < num_pairs.unsqueeze(1)
        padded, _ = self.comp_layer(padded, pair_valid)
        pair_tokens = padded[bi, slot]

        logits = self.box_pair_predictor(pair_tokens)
        objects = labels[bi, pj]
        prior = self.compute_prior_scores(scores[bi, pi], scores[bi, pj], objects)
        return InteractionHeadOutput(logits, prior, pi, pj, objects, num_pairs.tolist(), pair_tokens)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], prefix: str = "interaction_head.") -> dict[str, Tensor]:
    """Extract the interaction-head weights of an official UPT checkpoint, for ``InteractionHead.load_state_dict``.

    Unwraps ``{"model_state_dict": ...}`` (the official format, ``torch.load(f, weights_only=True)``), keeps the keys
    under ``prefix`` with the prefix removed and drops the frozen detector (``detector.*``).

    Raises:
        ValueError: If no key starts with ``prefix``.
    """
    sd = state_dict.get("model_state_dict", state_dict)
    out = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"no key starts with {prefix!r}; first keys: {list(sd)[:5]}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Loss and scoring
# ----------------------------------------------------------------------------------------------------------------


def binary_focal_loss_with_logits(
    x: Tensor, y: Tensor, alpha: float = 0.5, gamma: float = 0.2, reduction: str = "sum", eps: float = 1e-6
) -> Tensor:
    """Binary focal loss ``|1 - y - alpha| * (|y - sigmoid(x)| + eps)^gamma * BCEWithLogits(x, y)`` (UPT ``ops``).

    Lin et al., arXiv 1708.02002, in UPT's form: the modulating term uses ``|y - p|`` and ``alpha`` weighs
    positives by ``alpha`` and negatives by ``1 - alpha``.

    Args:
        x: (...) logits.
        y: (...) binary targets, same shape.
        alpha: Balance of positives and negatives (UPT training 0.5).
        gamma: Focusing exponent (UPT training 0.2; the official function's default 2.0 is overridden in main.py).
        reduction: ``"sum"``, ``"mean"`` or ``"none"``.
        eps: Added to ``|y - p|`` so that the power has a finite gradient at 0 (1e-6).

    Returns:
        The reduced loss (scalar) or the elementwise loss.

    Raises:
        ValueError: On a shape mismatch or an unknown reduction.
    """
    if x.shape != y.shape:
        raise ValueError(f"logits {tuple(x.shape)} and targets {tuple(y.shape)} must have the same shape")
    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"reduction={reduction!r}; expected 'sum', 'mean' or 'none'")
    y = y.to(x.dtype)
    loss = (
        (1 - y - alpha).abs()
        * ((y - torch.sigmoid(x)).abs() + eps) ** gamma
        * F.binary_cross_entropy_with_logits(x, y, reduction="none")
    )
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


def associate_with_ground_truth(
    boxes_h: Tensor,
    boxes_o: Tensor,
    gt_boxes_h: Tensor,
    gt_boxes_o: Tensor,
    gt_verbs: Tensor,
    num_classes: int,
    fg_iou_thresh: float = 0.5,
) -> Tensor:
    """Multi-hot verb labels (M, K) of detected pairs of one image (UPT ``associate_with_ground_truth``).

    Pair m gets verb v if some GT pair g with verb v has ``min(IoU(h_m, gt_h_g), IoU(o_m, gt_o_g)) >= fg_iou_thresh``.

    Args:
        boxes_h: (M, 4) subject boxes, xyxy pixels.
        boxes_o: (M, 4) object boxes.
        gt_boxes_h: (G, 4) GT human boxes, xyxy pixels (UPT converts its normalised cxcywh targets first).
        gt_boxes_o: (G, 4) GT object boxes.
        gt_verbs: (G,) verb of each GT pair.
        num_classes: K.
        fg_iou_thresh: Matching threshold (0.5, inclusive).
    """
    labels = boxes_h.new_zeros(len(boxes_h), num_classes)
    if len(boxes_h) and len(gt_boxes_h):
        m, g = (torch.minimum(box_iou(boxes_h, gt_boxes_h), box_iou(boxes_o, gt_boxes_o)) >= fg_iou_thresh).nonzero(
            as_tuple=True
        )
        labels[m, gt_verbs[g]] = 1
    return labels


def pair_labels(
    output: InteractionHeadOutput,
    proposals: Sequence[Detections],
    targets: Sequence[Mapping[str, Tensor]],
    fg_iou_thresh: float = 0.5,
) -> Tensor:
    """(M, K) verb targets of a batch's pairs, from per-image GT in the built-in HOI layout.

    Each target holds ``"boxes"`` (G, 4) xyxy pixels and ``"hoi"`` (P, 3) rows ``(human, object, verb)`` indexing
    ``boxes`` (:func:`tenfold.data.synthetic.hoi.make_hoi`); each image is labelled with
    :func:`associate_with_ground_truth`.

    Raises:
        ValueError: If the number of targets differs from the number of images.
    """
    if len(targets) != len(proposals):
        raise ValueError(f"got {len(targets)} targets for {len(proposals)} images")
    k = output.logits.shape[1]
    parts = []
    for p, t, h, o in zip(
        proposals, targets, output.pair_h.split(output.num_pairs), output.pair_o.split(output.num_pairs), strict=True
    ):
        gt, hoi = t["boxes"].to(p.boxes), t["hoi"].long()
        parts.append(
            associate_with_ground_truth(
                p.boxes[h], p.boxes[o], gt[hoi[:, 0]], gt[hoi[:, 1]], hoi[:, 2], k, fg_iou_thresh
            )
        )
    return torch.cat(parts) if parts else output.logits.new_zeros(0, k)


def interaction_loss(
    logits: Tensor,
    prior: Tensor,
    labels: Tensor,
    alpha: float = 0.5,
    gamma: float = 0.2,
    num_positives: float | None = None,
) -> Tensor:
    """UPT's interaction loss: focal loss on the prior-calibrated logits of the valid (pair, verb) entries.

    Entries with a non-zero prior ``pi = s_h * s_o`` (training power 1.0) are kept; with ``s`` the logit,
    ``x = log(pi / (1 + exp(-s) - pi) + 1e-8)`` (the logit of ``sigmoid(s) * pi``), and
    ``L = sum focal(x, y) / N_pos`` with N_pos the number of positive kept entries.

    Args:
        logits: (M, K) verb logits.
        prior: (2, M, K) prior scores from :class:`InteractionHead` in training mode.
        labels: (M, K) binary targets (:func:`associate_with_ground_truth`).
        alpha: Focal alpha (0.5).
        gamma: Focal gamma (0.2).
        num_positives: Normaliser; default the local count of positives (the official code averages it over
            processes under DDP: pass that value here).

    Returns:
        Scalar loss.

    Fidelity: with no positive entry the official code divides by 0 (inf/NaN); here the normaliser is clamped to
    at least 1, which gives the same value whenever the official one is finite.

    Raises:
        ValueError: On mismatched shapes.
    """
    if prior.shape != (2, *logits.shape) or labels.shape != logits.shape:
        raise ValueError(
            f"expected prior (2, M, K) and labels (M, K) for logits {tuple(logits.shape)}, got "
            f"{tuple(prior.shape)} and {tuple(labels.shape)}"
        )
    pi = prior.prod(0)
    keep = pi != 0
    pi, s, y = pi[keep], logits[keep], labels[keep].to(logits.dtype)
    n_p = float((y != 0).sum()) if num_positives is None else float(num_positives)
    x = torch.log(pi / (1 + torch.exp(-s) - pi) + 1e-8)
    return binary_focal_loss_with_logits(x, y, alpha, gamma, reduction="sum") / max(n_p, 1.0)


class HOIDetections(NamedTuple):
    """Scored interactions of one image.

    Attributes:
        boxes: (N, 4) the proposal boxes.
        pairing: (2, D) subject and object indices into ``boxes``.
        scores: (D,) ``sigmoid(logit) * s_h^p * s_o^p``.
        labels: (D,) verb classes.
        objects: (D,) object classes.
    """

    boxes: Tensor
    pairing: Tensor
    scores: Tensor
    labels: Tensor
    objects: Tensor


def postprocess(output: InteractionHeadOutput, proposals: Sequence[Detections]) -> list[HOIDetections]:
    """Score every valid (pair, verb) entry: ``sigmoid(logit) * prior_h * prior_o`` (UPT ``postprocessing``).

    Entries whose prior is zero (verb invalid for the object class, the object-verb correspondence) are dropped.
    Run the head in eval mode for the official test-time power 2.8.

    Args:
        output: Head outputs of a batch.
        proposals: The proposals the head was run on.

    Returns:
        One :class:`HOIDetections` per image.
    """
    pi = output.prior.prod(0)
    m, v = pi.nonzero(as_tuple=True)
    scores = torch.sigmoid(output.logits[m, v]) * pi[m, v]
    per_image = torch.bincount(
        torch.repeat_interleave(
            torch.arange(len(proposals), device=m.device), torch.tensor(output.num_pairs, device=m.device)
        )[m],
        minlength=len(proposals),
    ).tolist()
    pairing = torch.stack([output.pair_h[m], output.pair_o[m]])
    return [
        HOIDetections(p.boxes, pr, sc, lb, ob)
        for p, pr, sc, lb, ob in zip(
            proposals,
            pairing.split(per_image, dim=1),
            scores.split(per_image),
            v.split(per_image),
            output.objects[m].split(per_image),
            strict=True,
        )
    ]


class UPTBaseline(nn.Module):
    """The UPT two-stage baseline on given detections: proposal filtering, interaction head, loss and scoring.

    Holds the head as ``interaction_head`` (the official prefix), so ``UPTBaseline.interaction_head`` loads an official
    checkpoint through :func:`checkpoint_filter_fn`; the frozen detector stays outside.

    Args:
        head: The :class:`InteractionHead`.
        box_score_thresh: Proposal score threshold (0.2).
        min_instances: Minimum humans and objects per image (3).
        max_instances: Maximum humans and objects per image (15).
        fg_iou_thresh: Pair-to-GT matching threshold for the labels (0.5).
        alpha: Focal alpha (0.5).
        gamma: Focal gamma (0.2).
    """

    def __init__(
        self,
        head: InteractionHead,
        *,
        box_score_thresh: float = 0.2,
        min_instances: int = 3,
        max_instances: int = 15,
        fg_iou_thresh: float = 0.5,
        alpha: float = 0.5,
        gamma: float = 0.2,
    ) -> None:
        """Store the head and the official hyperparameters."""
        super().__init__()
        self.interaction_head = head
        self.box_score_thresh = box_score_thresh
        self.min_instances = min_instances
        self.max_instances = max_instances
        self.fg_iou_thresh = fg_iou_thresh
        self.alpha = alpha
        self.gamma = gamma

    def proposals(self, detections: Sequence[Detections]) -> list[Detections]:
        """:func:`prepare_region_proposals` with this model's thresholds and the head's human label."""
        return prepare_region_proposals(
            detections,
            human_idx=self.interaction_head.human_idx,
            box_score_thresh=self.box_score_thresh,
            min_instances=self.min_instances,
            max_instances=self.max_instances,
        )

    def forward(
        self,
        features: Tensor,
        image_sizes: Tensor,
        detections: Sequence[Detections],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> Tensor | list[HOIDetections]:
        """Training (``targets`` given): the interaction loss; otherwise the scored interactions per image.

        Args:
            features: (B, C, H, W) backbone feature map.
            image_sizes: (B, 2) image (height, width).
            detections: Raw detector outputs per image (filtered here).
            targets: Per image ``"boxes"`` (G, 4) xyxy pixels and ``"hoi"`` (P, 3) (human, object, verb) rows.

        Returns:
            The scalar loss, or one :class:`HOIDetections` per image.
        """
        props = self.proposals(detections)
        out = self.interaction_head(features, image_sizes, props)
        if targets is None:
            return postprocess(out, props)
        labels = pair_labels(out, props, targets, self.fg_iou_thresh)
        return interaction_loss(out.logits, out.prior, labels, self.alpha, self.gamma)
