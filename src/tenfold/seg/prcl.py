"""PRCL: probabilistic representation contrastive learning for semi-supervised segmentation (core, pure PyTorch).

Paper: Xie et al., "Boosting Semi-Supervised Semantic Segmentation with Probabilistic Representations", AAAI 2023
(arXiv 2210.14670); journal version "PRCL" (arXiv 2402.18117). Official code: Haoyu-Xie/PRCL (d8829da), which
implements the AAAI version; this module follows the code (spec: ``/work/shared/specs/prcl.md``).

* :class:`PRCLDeepLabV3Plus`: :class:`~tenfold.seg.models.DeepLabV3Plus` plus PRCL's ``representation`` head; official
  checkpoints (``resnet_conv1``... backbone names) load through :func:`load_prcl_checkpoint`, which renames the
  backbone with :func:`tenfold.seg.models.checkpoint_filter_fn` (all other names, the key order and shapes are the
  official ones).
* :class:`UncertaintyHead`: the per-dimension variance sigma^2 in (0, 1) of the 304-channel decoder feature.
* :func:`mutual_likelihood_score` and :class:`PRCLLoss` (``Prcl_Loss_single``): InfoNCE over MLS logits between hard
  anchors, their class prototype (product-of-Gaussians fusion) and negatives sampled by prototype similarity.
* :func:`contrastive_targets`, :func:`attention_threshold_loss`, the schedules :func:`prcl_weight`,
  :func:`poly_epoch_lr`, and the mean-teacher update :func:`ema_decay` / :func:`ema_update_`.

Randomness (spec pitfall 13): the official loss draws anchors with ``torch.randint`` and negative classes with
``Categorical.sample`` (both the global torch RNG), and negative pixels with the unseeded global **numpy** RNG. Here
all three come from the torch ``generator`` argument (the global torch RNG when None): anchors via ``torch.randint``
and classes via ``torch.multinomial`` exactly as the official calls (so with the same torch state they are the
official draws), and negative pixels via ``torch.rand`` (uniform with replacement in each class pool, as numpy's
``randint``; not the same numbers). Every draw is recorded in :attr:`PRCLLoss.last_sample` and can be passed back as
``sample=`` to replay a call exactly, which is how the official recordings are reproduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tenfold.seg.models import DeepLabV3Plus, SegOutput, checkpoint_filter_fn
from tenfold.utils.checkpoint import load_checkpoint

__all__ = [
    "PRCLDeepLabV3Plus",
    "PRCLLoss",
    "PRCLOutput",
    "PRCLSample",
    "UncertaintyHead",
    "attention_threshold_loss",
    "contrastive_targets",
    "ema_decay",
    "ema_update_",
    "load_prcl_checkpoint",
    "mutual_likelihood_score",
    "poly_epoch_lr",
    "prcl_weight",
]

IGNORE_INDEX = 255


class PRCLOutput(NamedTuple):
    """What :meth:`PRCLDeepLabV3Plus.forward_prcl` returns (PRCL's ``(prediction, representation, cat)``).

    Attributes:
        logits: (B, num_classes, h, w) logits at 1/4 of the input.
        representation: (B, representation_dim, h, w) the means mu of the probabilistic representation.
        features: (B, low_channels + aspp_channels, h, w) the decoder feature ``cat`` (input of the uncertainty head).
    """

    logits: Tensor
    representation: Tensor
    features: Tensor


class PRCLDeepLabV3Plus(DeepLabV3Plus):
    """PRCL's ``DeepLabv3Plus_with_un``: DeepLabV3+ with a representation head on the decoder feature.

    ``representation`` = Conv3x3 (no bias) + BN + ReLU + Conv1x1 (bias), children 0, 1, 2, 3 as the official module,
    so its state dict equals the official one after the backbone renaming of :func:`load_prcl_checkpoint`.
    :meth:`forward` is the base's (logits only), so segmentation inference works unchanged.

    Args:
        representation_dim: channels of the representation (256).
        *args, **kwargs: the arguments of :class:`~tenfold.seg.models.DeepLabV3Plus` (defaults: PRCL's VOC build,
            ResNet-101, output stride 16, rates (6, 12, 18)).
    """

    def __init__(self, *args: Any, representation_dim: int = 256, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if representation_dim < 1:
            raise ValueError(f"representation_dim must be >= 1, got {representation_dim}")
        self.init_config["representation_dim"] = representation_dim
        in_ch = self.classifier[0].in_channels
        mid = self.classifier[0].out_channels
        self.representation_dim = representation_dim
        self.representation = nn.Sequential(
            nn.Conv2d(in_ch, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, representation_dim, 1),
        )

    @property
    def feature_channels(self) -> int:
        """Channels of the decoder feature (304 for PRCL), the uncertainty head's input."""
        return self.classifier[0].in_channels

    def forward_prcl(self, x: Tensor) -> PRCLOutput:
        """Logits, representation and decoder feature of images (B, 3, H, W), all at 1/4 resolution."""
        feat = self.decoder_features(self.forward_features(x))
        return PRCLOutput(self.classifier(feat), self.representation(feat), feat)

    def forward(self, x: Tensor) -> SegOutput:  # noqa: D102 - the base's, kept explicit for readers
        return super().forward(x)


class UncertaintyHead(nn.Module):
    """PRCL's ``Uncertainty_head``: per-pixel, per-dimension variance sigma^2 in (0, 1) of the decoder feature.

    ``h = BN2(W2n relu(BN1(W1n x)))`` with row-normalised raw weights ``fc1``/``fc2`` (1x1 linear maps over
    channels; ``bn2`` without affine), ``h = gamma h + beta`` and ``sigma2 = sigmoid(log(exp(h) + 1e-6))``.

    Args:
        in_channels: channels of the decoder feature (304).
        out_channels: representation dimension D (256).
    """

    def __init__(self, in_channels: int = 304, out_channels: int = 256) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be >= 1, got in={in_channels}, out={out_channels}")
        self.fc1 = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bn1 = nn.BatchNorm2d(out_channels, affine=True)
        self.fc2 = nn.Parameter(torch.empty(out_channels, out_channels))
        self.bn2 = nn.BatchNorm2d(out_channels, affine=False)
        self.gamma = nn.Parameter(torch.ones(1))
        self.beta = nn.Parameter(torch.zeros(1))
        nn.init.kaiming_normal_(self.fc1)
        nn.init.kaiming_normal_(self.fc2)

    def forward(self, features: Tensor) -> Tensor:
        """sigma^2 (B, out_channels, h, w) of features (B, in_channels, h, w)."""
        if features.dim() != 4 or features.shape[1] != self.fc1.shape[1]:
            raise ValueError(
                f"UncertaintyHead expects features (B, {self.fc1.shape[1]}, h, w), got {tuple(features.shape)}"
            )
        x = torch.einsum("oc,bchw->bohw", F.normalize(self.fc1, dim=-1), features)
        x = F.relu(self.bn1(x))
        x = self.bn2(torch.einsum("oc,bchw->bohw", F.normalize(self.fc2, dim=-1), x))
        x = self.gamma * x + self.beta
        return torch.sigmoid(torch.log(torch.exp(x) + 1e-6))


def mutual_likelihood_score(mu0: Tensor, mu1: Tensor, sigma0: Tensor, sigma1: Tensor) -> Tensor:
    """PRCL's MLS of diagonal Gaussians (broadcasting over [..., D]): the official mean over D, no constant.

    ``-1/2 mean_d[(mu0n - mu1n)^2 / (sigma0 + sigma1) + log(sigma0 + sigma1)]`` with L2-normalised means
    (``F.normalize``) and unnormalised variances.

    Half-precision inputs are computed in float32 (their variances overflow float16 in the ratio).

    Returns:
        The broadcast shape without the last dimension.
    """
    if mu0.shape[-1] != mu1.shape[-1] or sigma0.shape[-1] != mu0.shape[-1] or sigma1.shape[-1] != mu1.shape[-1]:
        raise ValueError(
            f"MLS needs the same last dimension D, got mu0 {tuple(mu0.shape)}, mu1 {tuple(mu1.shape)}, "
            f"sigma0 {tuple(sigma0.shape)}, sigma1 {tuple(sigma1.shape)}"
        )
    if mu0.dtype in (torch.float16, torch.bfloat16) or sigma0.dtype in (torch.float16, torch.bfloat16):
        # half precision: 1 / (sigma0 + sigma1) reaches 5e5 for variances near 1e-6 (fp16 max 65504)
        mu0, mu1, sigma0, sigma1 = mu0.float(), mu1.float(), sigma0.float(), sigma1.float()
    diff = (F.normalize(mu0, dim=-1) - F.normalize(mu1, dim=-1)) ** 2
    down = sigma0 + sigma1
    return -0.5 * (diff / down + torch.log(down)).mean(-1)


@dataclass
class PRCLSample:
    """The random draws of one :class:`PRCLLoss` call, per valid class in ascending class order.

    Attributes:
        classes: the valid class ids (ascending); K = len(classes).
        anchors: per valid class, the (Q,) indices into its hard pool (None when the hard set is empty: skipped).
        negative_classes: per valid class, the (Q, N) draws in 0..K-2 of the other classes in the official order
            (i+1, ..., K-1, 0, ..., i-1), or None.
        negative_indices: per valid class, the (Q * N,) indices into the concatenated valid pools of the other
            classes, grouped per query row by class order (the official layout), or None.
    """

    classes: list[int] = field(default_factory=list)
    anchors: list[Tensor | None] = field(default_factory=list)
    negative_classes: list[Tensor | None] = field(default_factory=list)
    negative_indices: list[Tensor | None] = field(default_factory=list)


class PRCLLoss(nn.Module):
    """PRCL's contrastive loss (``Prcl_Loss_single``, spec 2.5) with an optional global-prototype memory (spec 2.9).

    For each valid class c (``label[:, c] * mask`` non-empty): the prototype is the product-of-Gaussians fusion of
    all its valid pixels (no gradient); anchors are Q pixels drawn with replacement from its hard pixels (valid and
    ``prob[:, c] < strong_threshold``); negatives are N pixels of the other classes, classes drawn from
    ``softmax(MLS(proto_c, proto_others) / temperature)``. The loss of a class is the cross-entropy of the MLS logits
    ``[prototype | negatives] / temperature`` with target 0; the total is their sum divided by K, the number of
    valid classes (classes with an empty hard set count in K but add nothing). Gradients flow through the anchors
    (mu and sigma) only. Computed in float32 at least, with autocast disabled (variances near 1e-6 overflow fp16).

    Args:
        num_queries: anchors Q per class (256).
        num_negatives: negatives N per anchor (512).
        temperature: divides the MLS logits and the class-similarity logits (official recipe 100).
        strong_threshold: anchors are valid pixels with prob below this (0.8).
        global_prototypes: journal-version Global Distribution Prototypes: keep a per-class prototype across calls,
            fused with each batch's prototype (off by default; not in the official code).
        prototype_momentum: weight m of the previous prototype's precision: ``P = m P_prev + (1 - m) P_batch``,
            ``mu = (m P_prev mu_prev + (1 - m) P_batch mu_batch) / P`` (elementwise; P = 1 / sigma).
        official_no_grad_zero: with < 2 valid classes return the official constant ``tensor(0.)`` without grad_fn
            instead of ``0 * (mu.sum() + sigma.sum())``.
    """

    def __init__(
        self,
        num_queries: int = 256,
        num_negatives: int = 512,
        temperature: float = 100.0,
        strong_threshold: float = 0.8,
        global_prototypes: bool = False,
        prototype_momentum: float = 0.99,
        official_no_grad_zero: bool = False,
    ) -> None:
        super().__init__()
        if num_queries < 1 or num_negatives < 1:
            raise ValueError(f"num_queries and num_negatives must be >= 1, got {num_queries}, {num_negatives}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= prototype_momentum < 1.0:
            raise ValueError(f"prototype_momentum must be in [0, 1), got {prototype_momentum}")
        self.num_queries = num_queries
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.strong_threshold = strong_threshold
        self.global_prototypes = global_prototypes
        self.prototype_momentum = prototype_momentum
        self.official_no_grad_zero = official_no_grad_zero
        self.last_sample: PRCLSample | None = None
        # GDP memory (non-persistent: rebuilt after a resume), filled lazily at the first call; without GDP the
        # loss holds no state at all
        if global_prototypes:
            self.register_buffer("global_mu", torch.empty(0), persistent=False)
            self.register_buffer("global_sigma", torch.empty(0), persistent=False)
            self.register_buffer("global_seen", torch.empty(0, dtype=torch.bool), persistent=False)

    def reset_prototypes(self) -> None:
        """Forget the global prototypes (``global_prototypes=True``)."""
        if not self.global_prototypes:
            return
        self.global_mu = torch.empty(0, device=self.global_mu.device)
        self.global_sigma = torch.empty(0, device=self.global_sigma.device)
        self.global_seen = torch.empty(0, dtype=torch.bool, device=self.global_seen.device)

    @staticmethod
    def _check(mu: Tensor, sigma: Tensor, label: Tensor, mask: Tensor, prob: Tensor) -> None:
        if mu.dim() != 4:
            raise ValueError(f"mu must be (N, D, h, w), got {tuple(mu.shape)}")
        n, _, h, w = mu.shape
        if sigma.shape != mu.shape:
            raise ValueError(f"sigma {tuple(sigma.shape)} must have the shape of mu {tuple(mu.shape)}")
        if label.dim() != 4 or label.shape[0] != n or label.shape[2:] != (h, w):
            raise ValueError(f"label_onehot must be (N={n}, C, {h}, {w}), got {tuple(label.shape)}")
        if tuple(mask.shape) != (n, 1, h, w):
            raise ValueError(f"mask must be ({n}, 1, {h}, {w}), got {tuple(mask.shape)}")
        if prob.shape != label.shape:
            raise ValueError(f"prob {tuple(prob.shape)} must have the shape of label_onehot {tuple(label.shape)}")

    def _fuse_global(self, classes: list[int], proto_mu: Tensor, proto_sigma: Tensor, num_classes: int) -> tuple:
        if self.global_mu.numel() == 0 or self.global_mu.shape != (num_classes, proto_mu.shape[1]):
            self.global_mu = proto_mu.new_zeros(num_classes, proto_mu.shape[1])
            self.global_sigma = proto_sigma.new_ones(num_classes, proto_sigma.shape[1])
            self.global_seen = torch.zeros(num_classes, dtype=torch.bool, device=proto_mu.device)
        idx = torch.tensor(classes, device=proto_mu.device)
        prev_mu = self.global_mu[idx].to(proto_mu.dtype)
        prev_prec = 1.0 / self.global_sigma[idx].to(proto_sigma.dtype)
        seen = self.global_seen[idx][:, None]
        m = self.prototype_momentum
        prec_b = 1.0 / proto_sigma
        prec = torch.where(seen, m * prev_prec + (1 - m) * prec_b, prec_b)
        mu = torch.where(seen, (m * prev_prec * prev_mu + (1 - m) * prec_b * proto_mu) / prec, proto_mu)
        sigma = 1.0 / prec
        self.global_mu[idx] = mu.to(self.global_mu.dtype)
        self.global_sigma[idx] = sigma.to(self.global_sigma.dtype)
        self.global_seen[idx] = True
        return mu, sigma

    def forward(
        self,
        mu: Tensor,
        sigma: Tensor,
        label_onehot: Tensor,
        mask: Tensor,
        prob: Tensor,
        sample: PRCLSample | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The PRCL loss (0-d) of means/variances (N, D, h, w), one-hot labels/probs (N, C, h, w), mask (N, 1, h, w).

        Args:
            mu: representation means.
            sigma: variances in (0, 1) (the uncertainty head's output).
            label_onehot: one-hot (pseudo-)labels at feature resolution.
            mask: valid pixels (bool or 0/1 float).
            prob: the student's softmax probabilities (no gradient is taken through them).
            sample: replay these draws instead of drawing (e.g. :attr:`last_sample` of an earlier call).
            generator: torch generator of the draws (the global torch RNG when None).

        Raises:
            ValueError: shapes that do not fit, or a ``sample`` that does not fit the batch.
        """
        self._check(mu, sigma, label_onehot, mask, prob)
        work = torch.float64 if mu.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=mu.device.type, enabled=False):
            return self._loss(mu.to(work), sigma.to(work), label_onehot, mask, prob.to(work), sample, generator)

    def _loss(self, mu, sigma, label, mask, prob, sample, generator) -> Tensor:
        num_classes = label.shape[1]
        d = mu.shape[1]
        q, n_neg = self.num_queries, self.num_negatives
        valid_all = (label != 0) & (mask != 0)
        mu_p = mu.permute(0, 2, 3, 1)
        sigma_p = sigma.permute(0, 2, 3, 1)
        prob = prob.detach()
        classes, pools_mu, pools_sigma, hard_mu, hard_sigma, protos_mu, protos_sigma = [], [], [], [], [], [], []
        for c in range(num_classes):
            valid = valid_all[:, c]
            if not valid.any():
                continue
            hard = valid & (prob[:, c] < self.strong_threshold)
            with torch.no_grad():
                s_valid = sigma_p[valid]
                p_sigma = 1.0 / torch.sum(1.0 / s_valid, dim=0)
                p_mu = torch.sum((p_sigma / s_valid) * mu_p[valid], dim=0)
            classes.append(c)
            protos_mu.append(p_mu)
            protos_sigma.append(p_sigma)
            pools_mu.append(mu_p[valid])
            pools_sigma.append(sigma_p[valid])
            hard_mu.append(mu_p[hard])
            hard_sigma.append(sigma_p[hard])
        k = len(classes)
        if sample is not None and sample.classes != classes:
            raise ValueError(f"sample was drawn for classes {sample.classes}, but this batch has {classes}")
        record = PRCLSample(classes=list(classes))
        if k <= 1:
            self.last_sample = record
            if self.official_no_grad_zero:
                return torch.tensor(0.0)
            return 0.0 * (mu.sum() + sigma.sum())
        proto_mu = torch.stack(protos_mu)
        proto_sigma = torch.stack(protos_sigma)
        if self.global_prototypes:
            with torch.no_grad():
                proto_mu, proto_sigma = self._fuse_global(classes, proto_mu, proto_sigma, num_classes)
        counts = [len(p) for p in pools_mu]
        total = mu.new_zeros(())
        for i in range(k):
            n_hard = len(hard_mu[i])
            if n_hard == 0:
                record.anchors.append(None)
                record.negative_classes.append(None)
                record.negative_indices.append(None)
                continue
            order = list(range(i + 1, k)) + list(range(i))
            if sample is not None:
                idx = sample.anchors[i]
                if idx is None or idx.shape != (q,) or int(idx.max()) >= n_hard or int(idx.min()) < 0:
                    raise ValueError(f"sample.anchors[{i}] must be ({q},) indices below {n_hard}")
            else:
                idx = torch.randint(n_hard, (q,), generator=generator, device=mu.device)
            anchor_mu, anchor_sigma = hard_mu[i][idx], hard_sigma[i][idx]
            with torch.no_grad():
                others = torch.tensor(order, device=mu.device)
                sim = mutual_likelihood_score(
                    proto_mu[i : i + 1], proto_mu[others], proto_sigma[i : i + 1], proto_sigma[others]
                )
                p = torch.softmax(sim / self.temperature, dim=0)
                other_counts = torch.tensor([counts[j] for j in order], device=mu.device)
                offsets = torch.cumsum(other_counts, 0) - other_counts
                if sample is not None:
                    neg_cls, neg_idx = sample.negative_classes[i], sample.negative_indices[i]
                    if (
                        neg_cls is None
                        or neg_idx is None
                        or neg_cls.shape != (q, n_neg)
                        or neg_idx.shape != (q * n_neg,)
                    ):
                        raise ValueError(
                            f"sample negatives of class slot {i} must be ({q}, {n_neg}) and ({q * n_neg},)"
                        )
                    if int(neg_idx.max()) >= int(other_counts.sum()):
                        raise ValueError(f"sample.negative_indices[{i}] exceed the {int(other_counts.sum())} negatives")
                else:
                    # Categorical(p).sample([Q, N]) is multinomial(p, Q*N, replacement=True) reshaped: same draws
                    neg_cls = torch.multinomial(p, q * n_neg, replacement=True, generator=generator).reshape(q, n_neg)
                    grouped = torch.sort(neg_cls, dim=1, stable=True).values  # per row: grouped by class order
                    u = torch.rand(q, n_neg, generator=generator, device=mu.device, dtype=torch.float64)
                    n_c = other_counts[grouped]
                    neg_idx = (offsets[grouped] + torch.minimum((u * n_c).long(), n_c - 1)).reshape(-1)
                neg_mu = torch.cat([pools_mu[j] for j in order])[neg_idx].reshape(q, n_neg, d)
                neg_sigma = torch.cat([pools_sigma[j] for j in order])[neg_idx].reshape(q, n_neg, d)
                all_mu = torch.cat([proto_mu[i].expand(q, 1, d), neg_mu], dim=1)
                all_sigma = torch.cat([proto_sigma[i].expand(q, 1, d), neg_sigma], dim=1)
            record.anchors.append(idx)
            record.negative_classes.append(neg_cls)
            record.negative_indices.append(neg_idx)
            logits = mutual_likelihood_score(anchor_mu[:, None], all_mu, anchor_sigma[:, None], all_sigma)
            target = torch.zeros(q, dtype=torch.long, device=mu.device)
            total = total + F.cross_entropy(logits / self.temperature, target)
        self.last_sample = record
        return total / k


def _onehot(labels: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """One-hot (B, C, H, W) of labels (B, H, W); ignored pixels become class 0 (the official ``relu(-1)``)."""
    lab = torch.where(labels == ignore_index, torch.zeros_like(labels), labels).long()
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}) or {ignore_index}, got {int(lab.min())}..{int(lab.max())}"
        )
    return F.one_hot(lab, num_classes).permute(0, 3, 1, 2).float()


@torch.no_grad()
def contrastive_targets(
    labels_l: Tensor,
    pseudo_u: Tensor,
    conf_u: Tensor,
    logits_all: Tensor,
    num_classes: int,
    weak_threshold: float = 0.7,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor, Tensor]:
    """The (label_onehot, mask, prob) inputs of :class:`PRCLLoss` for a labelled + unlabelled batch (spec 2.4).

    Labelled mask: ``labels_l != ignore``; unlabelled mask: ``conf_u >= weak_threshold`` (officially the only test:
    pseudo-labels are ignored only where padding set conf to 0; ignored pseudo-labels are also masked here).
    Labels and masks are resized to the logits' size with nearest interpolation; prob = softmax of the logits.

    Args:
        labels_l: (B, H, W) ground truth with ``ignore_index``.
        pseudo_u: (B, H, W) pseudo-labels of the (mixed, augmented) unlabelled images.
        conf_u: (B, H, W) their confidences.
        logits_all: (2B, C, h, w) student logits of the labelled then unlabelled images.
        num_classes: C.
        weak_threshold: confidence of valid unlabelled pixels (0.7).
        ignore_index: ignored label (255).

    Returns:
        label_onehot (2B, C, h, w), mask (2B, 1, h, w) float, prob (2B, C, h, w).
    """
    if labels_l.dim() != 3 or pseudo_u.shape != conf_u.shape or pseudo_u.dim() != 3:
        raise ValueError(
            f"labels_l, pseudo_u, conf_u must be (B, H, W), got {tuple(labels_l.shape)}, {tuple(pseudo_u.shape)}, "
            f"{tuple(conf_u.shape)}"
        )
    b_l, b_u = labels_l.shape[0], pseudo_u.shape[0]
    if logits_all.dim() != 4 or logits_all.shape[0] != b_l + b_u or logits_all.shape[1] != num_classes:
        raise ValueError(f"logits_all must be ({b_l + b_u}, {num_classes}, h, w), got {tuple(logits_all.shape)}")
    size = logits_all.shape[-2:]
    mask = torch.cat(
        [(labels_l != ignore_index).float(), ((conf_u >= weak_threshold) & (pseudo_u != ignore_index)).float()]
    )
    mask = F.interpolate(mask[:, None], size=size, mode="nearest")
    onehot_l = F.interpolate(_onehot(labels_l, num_classes, ignore_index), size=size, mode="nearest")
    onehot_u = F.interpolate(_onehot(pseudo_u, num_classes, ignore_index), size=size, mode="nearest")
    prob = torch.softmax(logits_all.detach().float() if logits_all.dtype != torch.float64 else logits_all, dim=1)
    return torch.cat([onehot_l, onehot_u]), mask, prob


def attention_threshold_loss(
    logits: Tensor, pseudo_label: Tensor, confidence: Tensor, threshold: float = 0.97, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """ReCo/PRCL ``Attention_Threshold_Loss`` (spec 2.7): confidence-weighted pseudo-label cross-entropy.

    Per image, ``w_b = #(confidence >= threshold) / #(pseudo_label != ignore)``; the loss is the mean of
    ``w_b * CE`` over pixels with CE > 0. NaN when an image has no valid pseudo-label (as official).

    Args:
        logits: (B, C, H, W) student logits on the unlabelled images.
        pseudo_label: (B, H, W) pseudo-labels with ``ignore_index``.
        confidence: (B, H, W) pseudo-label confidences.
        threshold: the strong (un) threshold (0.97).
        ignore_index: ignored label (255).
    """
    if (
        logits.dim() != 4
        or pseudo_label.shape != confidence.shape
        or pseudo_label.shape
        != (
            logits.shape[0],
            *logits.shape[2:],
        )
    ):
        raise ValueError(
            f"logits (B, C, H, W) and pseudo_label/confidence (B, H, W) must agree, got {tuple(logits.shape)}, "
            f"{tuple(pseudo_label.shape)}, {tuple(confidence.shape)}"
        )
    b = logits.shape[0]
    valid = (pseudo_label != ignore_index).reshape(b, -1).sum(-1)
    weight = confidence.reshape(b, -1).ge(threshold).sum(-1) / valid
    loss = F.cross_entropy(logits, pseudo_label.long(), reduction="none", ignore_index=ignore_index)
    return torch.masked_select(weight[:, None, None].to(loss.dtype) * loss, loss > 0).mean()


def prcl_weight(epoch: int, total_epochs: int = 200, multiplier: float = -5.0, base: float = 1.0) -> float:
    """Weight of the PRCL loss at ``epoch`` (official RampdownScheduler): ``base exp(mult (e / total)^2)``, 0 after."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if epoch >= total_epochs:
        return 0.0
    return base * math.exp(multiplier * (epoch / total_epochs) ** 2)


def poly_epoch_lr(
    base_lr: float, epoch: int, total_epochs: int = 200, power: float = 0.9, min_lr: float = 1e-6
) -> float:
    """Official PolyLR stepped per epoch: ``max(base_lr (1 - epoch / total)^power, min_lr)``."""
    if not 0 <= epoch <= total_epochs:
        raise ValueError(f"epoch must be in [0, {total_epochs}], got {epoch}")
    return max(base_lr * (1 - epoch / total_epochs) ** power, min_lr)


def ema_decay(step: int, alpha: float = 0.99) -> float:
    """Mean-teacher decay at optimisation step ``step`` (0-based): ``min(1 - 1 / (step + 1), alpha)``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_update_(
    teacher: nn.Module, student: nn.Module, step: int, alpha: float = 0.99, include_buffers: bool = False
) -> float:
    """``teacher = d teacher + (1 - d) student`` over parameters (and float buffers if asked); returns d.

    Official: parameters only, so BN running statistics of the teacher are its own (it runs in train mode).

    Raises:
        ValueError: the two modules' parameters do not match.
    """
    decay = ema_decay(step, alpha)
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params) or any(a.shape != b.shape for a, b in zip(t_params, s_params, strict=True)):
        raise ValueError("ema_update_: teacher and student parameters differ in number or shape")
    for t, s in zip(t_params, s_params, strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    if include_buffers:
        for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
            if t.is_floating_point():
                t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
            else:
                t.copy_(s)
    return decay


def load_prcl_checkpoint(path: str) -> dict[str, dict[str, Tensor]]:
    """An official PRCL checkpoint (``{'epoch', 'ema', 'model', 'uncer_head', ...}``) as our state dicts.

    ``model`` and ``ema`` go through :func:`~tenfold.seg.models.checkpoint_filter_fn` (``resnet_conv1``/``resnet_bn1``/
    ``resnet_layerN`` -> ``backbone.*``; a DDP ``module.`` prefix is stripped) and load strictly into
    :class:`PRCLDeepLabV3Plus`; ``uncer_head`` loads strictly into :class:`UncertaintyHead`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file lacks ``model`` or ``uncer_head``.
    """
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "uncer_head" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a PRCL checkpoint (needs 'model' and 'uncer_head'), got {keys}")
    out = {"model": checkpoint_filter_fn(ckpt["model"])}
    out["ema"] = checkpoint_filter_fn(ckpt["ema"]) if "ema" in ckpt else out["model"]
    head = ckpt["uncer_head"]
    out["uncer_head"] = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in head.items()}
    return out
