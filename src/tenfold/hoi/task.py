"""The HOI detection LightningModule: image backbone, frozen detector stage, RmLR / UPT head, HICO-style evaluation.

Pipeline of one batch (:class:`~tenfold.hoi.data.HOIBatch`):

1. **Backbone** (``backbone``): the feature map the head reads (its global average for the pair tokens, RoI grids
   for re-mining). ``resnet50`` / ``resnet101``: torchvision's ResNet trunk up to C5 (stride 32, 2048 channels),
   weights read from a local file (``backbone_weights``; nothing downloads) and frozen by default, as the
   detector's backbone is in RmLR and UPT. ``small_cnn``: a 3-layer stride-8 CNN trained with the head, the
   default on built-in scenes: without pretrained weights a frozen random trunk gives the head no usable image
   cue (the re-mining branch would then have nothing to re-mine), and a ResNet-50 costs seconds per step on CPU.
2. **Detector stage**, frozen: ``detector="data"`` takes the detections carried by the batch (simulated on built-in
   scenes by :func:`~tenfold.hoi.detections.noisy_gt_detections`, or a detection file);
   ``detector="fasterrcnn"`` runs :class:`~tenfold.hoi.detections.TorchvisionDetector` (Faster R-CNN R50-FPN with
   local weights, 1024-d RoI features) on the images.
3. **Interaction model**: :class:`~tenfold.hoi.rmlr.RmLR` over a UPT :class:`~tenfold.hoi.upt.InteractionHead`;
   with ``remine``, ``align``, ``transfer`` and ``reason`` all False it is the UPT baseline exactly. The head's
   class structure (verbs, valid verbs per object, HOI classes) comes from the data module
   (:attr:`tenfold.hoi.data.HOIData.info`), so the model is built in :meth:`HOITask.configure_model` (or by
   :meth:`HOITask.build` outside a trainer). Text tables (when a text part is on) are encoded once and cached
   on disk by :func:`~tenfold.hoi.text.build_text_knowledge`, centred by default (spec 7).
4. **Loss**: the five-term RmLR loss; every term is logged (``train/focal``, ``train/sentence_alignment``, ...).
5. **Evaluation**: every scored (pair, verb) of an image becomes a detection of the HOI class (object label, verb);
   :func:`~tenfold.hoi.hico_eval.upt_evaluate` (UPT's protocol: 11-point AP, min-IoU > 0.5) gives ``val/map``,
   ``val/map_rare`` and ``val/map_non_rare`` (fractions in [0, 1]; rare: fewer than ``rare_threshold`` = 10
   training pairs, counted on the data module's training split, as HICO-DET's 138 rare classes). Under DDP the
   detections of all processes are gathered before the evaluation.
   With ``eval_protocol="vcoco"`` (the default when the data module's dataset is ``vcoco``) the task also logs
   the V-COCO role AP, ``val/role_ap_s1`` and ``val/role_ap_s2`` (scenario 1 / 2, mean over the action-roles
   with positives, fractions in [0, 1]): the scored pairs of each image, boxes rescaled to the original image,
   become person-centric detections by :func:`~tenfold.hoi.vcoco_eval.pairs_to_vcoco_detections` (per human and
   action: the best pair's score and object box) and :func:`~tenfold.hoi.vcoco_eval.vcoco_role_ap` scores them
   against the data module's :class:`~tenfold.hoi.datasets.VCOCOData` (``HOIData.vcoco_ground_truth``). Verb k
   of the model is action k of the V-COCO file (as ``VCOCOData.records`` labels the pairs).

Optimiser (spec 3): AdamW, lr 1e-4, weight decay 1e-4, step decay x0.1 at epoch 10 of 20 (``optim``, timm names);
gradient clipping at 0.1 is the trainer's ``gradient_clip_val`` (recipes ``configs/rmlr/``).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tenfold.engine.optim import OptimConfig, configure_optimizers, timm_scheduler_step
from tenfold.hoi.data import HOIBatch, HOIVocabularyInfo
from tenfold.hoi.hico_eval import HOIMetrics, upt_evaluate
from tenfold.hoi.rmlr import RmLR, TextKnowledge
from tenfold.hoi.text import build_text_knowledge
from tenfold.hoi.upt import Detections, HOIDetections, InteractionHead
from tenfold.hoi.vcoco_eval import pairs_to_vcoco_detections, vcoco_role_ap

__all__ = ["HOITask", "RandomTextEncoder", "ResNetBackbone", "SmallConvBackbone", "build_backbone"]


# ----------------------------------------------------------------------------------------------------------------
# Backbones
# ----------------------------------------------------------------------------------------------------------------


class SmallConvBackbone(nn.Module):
    """Three 3x3 stride-2 conv + BN + ReLU stages (stride 8): the feature map of built-in scenes.

    Args:
        channels: output channels of the three stages; the last is ``num_channels``.
    """

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if len(channels) != 3 or min(channels) < 1:
            raise ValueError(f"channels must be 3 positive widths, got {channels}")
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.num_channels = channels[-1]
        self.stride = 8

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, C, H/8, W/8)."""
        return self.body(x)


class ResNetBackbone(nn.Module):
    """torchvision ResNet-50/101 trunk up to C5 (stride 32, 2048 channels), weights from a local file.

    Args:
        depth: 50 or 101.
        weights: a torchvision ResNet state dict (``resnet50-*.pth``) or a checkpoint whose ``model`` /
            ``state_dict`` entry is one; ``fc.*`` keys are dropped, the rest load strictly. None: random init.

    Raises:
        ValueError: On another depth, or weights that do not fit.
        FileNotFoundError: If ``weights`` does not exist.
    """

    def __init__(self, depth: int = 50, weights: str | None = None) -> None:
        super().__init__()
        import torchvision

        if depth not in (50, 101):
            raise ValueError(f"depth must be 50 or 101, got {depth}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights {str(path)!r} do not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("model", "state_dict"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
            state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
            net.fc = nn.Identity()
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ValueError(f"{path}: not a torchvision ResNet-{depth} state dict ({e})") from None
        self.body = nn.Sequential(*(list(net.children())[:-2]))
        self.num_channels = 2048
        self.stride = 32

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> C5 (B, 2048, H/32, W/32)."""
        return self.body(x)


def build_backbone(name: str, weights: str | None = None, channels: tuple[int, int, int] = (16, 32, 64)) -> nn.Module:
    """``small_cnn``, ``resnet50`` or ``resnet101`` (see the module docstring).

    Raises:
        ValueError: On an unknown name, or weights for ``small_cnn``.
    """
    if name == "small_cnn":
        if weights is not None:
            raise ValueError("small_cnn trains with the head: backbone_weights must be None")
        return SmallConvBackbone(tuple(channels))
    if name in ("resnet50", "resnet101"):
        return ResNetBackbone(int(name[6:]), weights)
    raise ValueError(f"unknown backbone {name!r}; expected 'small_cnn', 'resnet50' or 'resnet101'")


# ----------------------------------------------------------------------------------------------------------------
# Text encoders
# ----------------------------------------------------------------------------------------------------------------


class RandomTextEncoder:
    """Deterministic random unit embeddings, one per distinct text (seeded by its SHA-256): text without meaning.

    For tests and for the control "text tables carry no semantics"; the cache key is ``random-<dim>``.
    """

    def __init__(self, dim: int = 64) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.name = f"random-{dim}"

    def encode(self, texts: list[str]) -> Tensor:
        """(len(texts), dim) unit vectors."""
        rows = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:15], 16)
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(rows), dim=-1) if rows else torch.zeros(0, self.dim)


class _LazyEncoder:
    """A text encoder built only when a text is not in the cache (loading a model takes seconds)."""

    def __init__(self, name: str, factory: Any) -> None:
        self.name = name
        self._factory = factory
        self._encoder: Any = None

    def encode(self, texts: list[str]) -> Tensor:
        if self._encoder is None:
            self._encoder = self._factory()
        return self._encoder.encode(texts)


def _text_encoder(name: str) -> Any:
    from tenfold.hoi import text

    if name == "all-MiniLM-L6-v2":
        return _LazyEncoder(name, text.SentenceTransformerEncoder)
    if name.startswith("random-") and name[7:].isdigit():
        return RandomTextEncoder(int(name[7:]))
    if name.startswith("openclip:") and name.count(":") >= 2:
        _, model_name, weights = name.split(":", 2)
        key = f"openclip-{model_name}-{Path(weights).stem}"
        return _LazyEncoder(key, lambda: text.OpenCLIPEncoder(model_name, weights, name=key))
    raise ValueError(
        f"unknown text_encoder {name!r}; expected 'all-MiniLM-L6-v2', 'random-<dim>' or "
        "'openclip:<model name>:<local weight file>'"
    )


def _gather(items: list[Any]) -> list[Any]:
    """Concatenate per-process lists under DDP (every process gets all items)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, items)
    return [x for part in out for x in part]


# ----------------------------------------------------------------------------------------------------------------
# Task
# ----------------------------------------------------------------------------------------------------------------


class HOITask(pl.LightningModule):
    """Train and evaluate a two-stage HOI detector: UPT baseline or RmLR (see the module docstring).

    Args:
        backbone: ``small_cnn`` (trained with the head), ``resnet50`` or ``resnet101`` (frozen, local weights).
        backbone_weights: local weight file of a ResNet backbone.
        backbone_channels: widths of ``small_cnn``.
        freeze_backbone: default True for ResNets, False for ``small_cnn``.
        detector: ``data`` (detections from the batch) or ``fasterrcnn`` (:class:`TorchvisionDetector`).
        detector_weights: local Faster R-CNN weights (``detector="fasterrcnn"``).
        detector_kwargs: further :class:`~tenfold.hoi.detections.TorchvisionDetector` arguments.
        hidden_state_size: size D of the detection features (DETR 256; Faster R-CNN box head 1024; built-in: the
            data module's ``detection_hidden_size``).
        representation_size: pair representation size d_p (UPT 512).
        dropout_prob: dropout of the head (0.1).
        remine: RmLR re-mining.
        align: RmLR sentence- and word-level alignment.
        transfer: RmLR knowledge transfer.
        reason: RmLR reasoning with text-augmented features.
        rmlr_kwargs: further :class:`~tenfold.hoi.rmlr.RmLR` arguments (loss weights, ``remine_size``,
            ``roi_size``...); ``spatial_scale`` defaults to 1 / the backbone's stride.
        box_score_thresh: proposal score threshold (0.2).
        min_instances: minimum humans and objects kept per image (3).
        max_instances: maximum humans and objects kept per image (15).
        fg_iou_thresh: pair-to-GT matching threshold of the labels (0.5).
        alpha: focal alpha (0.5).
        gamma: focal gamma (0.2).
        train_prior_power: prior exponent in training (1.0).
        test_prior_power: prior exponent in evaluation (2.8).
        text_encoder: ``all-MiniLM-L6-v2`` (offline, ``tenfold[hoi]``), ``random-<dim>``, or
            ``openclip:<model name>:<local weight file>`` (CLIP's text tower, ``tenfold[clip]``).
        text_cache_dir: cache folder of the text tables.
        center_text: subtract the class mean from each text table and re-normalise (spec 7).
        optim: optimiser and schedule; default AdamW 1e-4, weight decay 1e-4, step x0.1 every 10 epochs.
        rare_threshold: HOI classes with fewer training pairs are rare (10).
        image_mean: normalisation mean of the backbone input; default the data module's.
        image_std: normalisation std; default the data module's.
        eval_protocol: ``hico`` (HOI-class mAP only) or ``vcoco`` (also the V-COCO role AP); None: ``vcoco`` when
            the data module's dataset is ``vcoco``, else ``hico``.

    Raises:
        ValueError: On an unknown backbone, detector, text encoder or evaluation protocol.
    """

    def __init__(
        self,
        backbone: Literal["small_cnn", "resnet50", "resnet101"] = "small_cnn",
        backbone_weights: str | None = None,
        backbone_channels: tuple[int, int, int] = (16, 32, 64),
        freeze_backbone: bool | None = None,
        detector: Literal["data", "fasterrcnn"] = "data",
        detector_weights: str | None = None,
        detector_kwargs: dict[str, Any] | None = None,
        hidden_state_size: int = 256,
        representation_size: int = 512,
        dropout_prob: float = 0.1,
        remine: bool = False,
        align: bool = False,
        transfer: bool = False,
        reason: bool = False,
        rmlr_kwargs: dict[str, Any] | None = None,
        box_score_thresh: float = 0.2,
        min_instances: int = 3,
        max_instances: int = 15,
        fg_iou_thresh: float = 0.5,
        alpha: float = 0.5,
        gamma: float = 0.2,
        train_prior_power: float = 1.0,
        test_prior_power: float = 2.8,
        text_encoder: str = "all-MiniLM-L6-v2",
        text_cache_dir: str | None = "~/.cache/tenfold/text",
        center_text: bool = True,
        optim: OptimConfig | None = None,
        rare_threshold: int = 10,
        image_mean: tuple[float, float, float] | None = None,
        image_std: tuple[float, float, float] | None = None,
        eval_protocol: Literal["hico", "vcoco"] | None = None,
    ) -> None:
        super().__init__()
        if detector not in ("data", "fasterrcnn"):
            raise ValueError(f"unknown detector {detector!r}; expected 'data' or 'fasterrcnn'")
        if eval_protocol not in (None, "hico", "vcoco"):
            raise ValueError(f"unknown eval_protocol {eval_protocol!r}; expected 'hico', 'vcoco' or None")
        self.save_hyperparameters(ignore=["optim"])
        self.optim = optim or OptimConfig(
            opt="adamw", lr=1e-4, weight_decay=1e-4, sched="step", decay_epochs=10, decay_rate=0.1
        )
        self.hparams["optim"] = asdict(self.optim)
        self.text_encoder_obj = _text_encoder(text_encoder)
        self.backbone = build_backbone(backbone, backbone_weights, tuple(backbone_channels))
        self.freeze_backbone = backbone != "small_cnn" if freeze_backbone is None else freeze_backbone
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
        self.detector: nn.Module | None = None
        if detector == "fasterrcnn":
            from tenfold.hoi.detections import TorchvisionDetector

            self.detector = TorchvisionDetector(weights=detector_weights, **(detector_kwargs or {}))
            self.detector.requires_grad_(False)
        self.model: RmLR | None = None
        self.info: HOIVocabularyInfo | None = None
        self.train_counts: Tensor | None = None
        self.text: TextKnowledge | None = None
        self._mean = image_mean
        self._std = image_std
        self._eval_records: list[dict[str, np.ndarray]] = []
        self.vcoco_gt: Any = None

    @property
    def eval_protocol(self) -> str:
        """``hico`` or ``vcoco`` (the hyper-parameter, else ``vcoco`` when V-COCO ground truth is set)."""
        return self.hparams.eval_protocol or ("vcoco" if self.vcoco_gt is not None else "hico")

    def set_vcoco_ground_truth(self, gt: Any) -> None:
        """Set the :class:`~tenfold.hoi.datasets.VCOCOData` of the evaluated split (dataset index i = image i).

        Raises:
            ValueError: If the model is built and its verbs are not the V-COCO actions in order.
        """
        if self.info is not None and tuple(self.info.vocabulary.verbs) != tuple(gt.actions):
            raise ValueError(
                f"V-COCO role AP needs the model's verbs to be the V-COCO actions in order: verbs "
                f"{list(self.info.vocabulary.verbs)}, actions {list(gt.actions)} (see the vocabulary_file)"
            )
        self.vcoco_gt = gt

    # -- building ---------------------------------------------------------------------------------------------
    @property
    def uses_text(self) -> bool:
        """Whether a text part (align, transfer, reason) is on."""
        hp = self.hparams
        return bool(hp.align or hp.transfer or hp.reason)

    def build(self, info: HOIVocabularyInfo, train_counts: Tensor | None = None) -> RmLR:
        """Build the interaction model for a dataset's class structure (idempotent for the same structure).

        Args:
            info: vocabulary and correspondence (:attr:`tenfold.hoi.data.HOIData.info`).
            train_counts: (C,) training pairs per HOI class (for rare / non-rare); None: no split.

        Raises:
            ValueError: If a model for another class structure exists, or the counts do not match.
        """
        if train_counts is not None and train_counts.shape != (info.num_hois,):
            raise ValueError(f"train_counts must have shape ({info.num_hois},), got {tuple(train_counts.shape)}")
        if self.model is not None:
            if self.info is not None and self.info.vocabulary != info.vocabulary:
                raise ValueError("the model was built for another vocabulary")
            self.train_counts = train_counts if train_counts is not None else self.train_counts
            return self.model
        hp = self.hparams
        head = InteractionHead(
            info.num_verbs, info.correspondence, hidden_state_size=hp.hidden_state_size,
            representation_size=hp.representation_size, num_channels=self.backbone.num_channels,
            train_prior_power=hp.train_prior_power, test_prior_power=hp.test_prior_power,
            dropout_prob=hp.dropout_prob,
        )  # fmt: skip
        text = None
        if self.uses_text:
            text = build_text_knowledge(
                self.text_encoder_obj, info.vocabulary,
                None if hp.text_cache_dir is None else Path(hp.text_cache_dir).expanduser(),
            )  # fmt: skip
            text = text.centered() if hp.center_text else text
        kwargs = {"spatial_scale": 1.0 / self.backbone.stride, **(hp.rmlr_kwargs or {})}
        self.model = RmLR(
            head, text=text, remine=hp.remine, align=hp.align, transfer=hp.transfer, reason=hp.reason,
            box_score_thresh=hp.box_score_thresh, min_instances=hp.min_instances, max_instances=hp.max_instances,
            fg_iou_thresh=hp.fg_iou_thresh, alpha=hp.alpha, gamma=hp.gamma, **kwargs,
        )  # fmt: skip
        self.info, self.train_counts, self.text = info, train_counts, text
        if self.vcoco_gt is not None:
            self.set_vcoco_ground_truth(self.vcoco_gt)  # check the verbs against the actions
        return self.model

    def configure_model(self) -> None:
        """Build the model from the trainer's data module (its ``info`` and ``train_counts``).

        Raises:
            ValueError: If the data module has no ``info`` (class structure).
        """
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.model is not None and dm is None:
            return
        if dm is None or not hasattr(dm, "info"):
            raise ValueError("HOITask needs a data module with an `info` (e.g. tenfold.hoi.data.HOIData)")
        sim = getattr(getattr(dm, "hparams", {}), "get", lambda k: None)("detection_hidden_size")
        if getattr(dm, "dataset_name", None) == "builtin" and sim != self.hparams.hidden_state_size:
            raise ValueError(
                f"the simulated detections have {sim} features but the head expects hidden_state_size="
                f"{self.hparams.hidden_state_size}: set model.init_args.hidden_state_size or "
                "data.init_args.detection_hidden_size"
            )
        counts = dm.train_counts if hasattr(dm, "train_counts") else None
        self.build(dm.info, counts)
        want = self.hparams.eval_protocol or ("vcoco" if getattr(dm, "dataset_name", None) == "vcoco" else "hico")
        if want == "vcoco" and self.vcoco_gt is None:
            if not hasattr(dm, "vcoco_ground_truth"):
                raise ValueError("eval_protocol 'vcoco' needs a data module with vcoco_ground_truth (HOIData)")
            self.set_vcoco_ground_truth(dm.vcoco_ground_truth("test"))
        if self._mean is None and hasattr(dm, "mean"):
            self._mean, self._std = tuple(dm.mean), tuple(dm.std)

    def trainable_modules(self) -> nn.Module:
        """The interaction model, plus the backbone unless frozen (the detector is always frozen)."""
        if self.model is None:
            raise ValueError("the model is not built: call build(info) or train with an HOIData module")
        parts = {"model": self.model}
        if not self.freeze_backbone:
            parts["backbone"] = self.backbone
        return nn.ModuleDict(parts)

    def configure_optimizers(self) -> Any:  # noqa: D102
        return configure_optimizers(self, self.trainable_modules(), self.optim)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:  # noqa: D102
        timm_scheduler_step(self, scheduler)

    def train(self, mode: bool = True) -> HOITask:
        """Training mode, with frozen parts (backbone if frozen, detector) kept in eval mode (BN, dropout)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        if self.detector is not None:
            self.detector.eval()
        return self

    # -- forward ----------------------------------------------------------------------------------------------
    def normalize(self, images: Tensor) -> Tensor:
        """Normalise [0, 1] images for the backbone (mean / std of the data, or ``image_mean`` / ``image_std``)."""
        mean = self._mean or (0.5, 0.5, 0.5)
        std = self._std or (0.25, 0.25, 0.25)
        m = images.new_tensor(mean).view(1, 3, 1, 1)
        s = images.new_tensor(std).view(1, 3, 1, 1)
        return (images - m) / s

    def features_and_detections(self, batch: HOIBatch) -> tuple[Tensor, list[Detections]]:
        """Backbone map of the batch and the per-image detections (from the batch or the detector)."""
        features = self.backbone(self.normalize(batch.images))
        if batch.detections is not None:
            dets = [d.to(features.device) for d in batch.detections]
        elif self.detector is not None:
            with torch.no_grad():
                dets = self.detector([img[:, : int(h), : int(w)] for img, (h, w) in zip(batch.images,
                                      batch.image_sizes.tolist(), strict=True)])  # fmt: skip
        else:
            raise ValueError("the batch has no detections and detector='data': give the data module detection files")
        return features, dets

    def forward(self, batch: HOIBatch) -> list[HOIDetections]:
        """Scored interactions per image (eval mode gives the test-time prior power)."""
        if self.model is None:
            raise ValueError("the model is not built: call build(info) or run through a trainer with HOIData")
        features, dets = self.features_and_detections(batch)
        return self.model(features, batch.image_sizes.to(features), dets)

    def training_step(self, batch: HOIBatch, batch_idx: int) -> Tensor:  # noqa: D102
        assert self.model is not None
        features, dets = self.features_and_detections(batch)
        targets = [{k: v.to(features.device) for k, v in t.items()} for t in batch.targets]
        props = self.model.proposals(dets)
        pairs = self.model.forward_pairs(features, batch.image_sizes.to(features), props)
        terms = self.model.loss_terms(pairs, props, targets)
        n = len(batch.targets)
        for name, value in terms._asdict().items():
            if name != "total":
                self.log(f"train/{name}", value, batch_size=n, sync_dist=True)
        self.log("train/loss", terms.total, prog_bar=True, batch_size=n, sync_dist=True)
        return terms.total

    # -- evaluation -------------------------------------------------------------------------------------------
    def _eval_step(self, batch: HOIBatch) -> None:
        assert self.model is not None and self.info is not None
        table = self.info.hoi_index()
        outs = self(batch)
        sizes = batch.image_sizes.tolist()
        for idx, out, target, size in zip(batch.indices.tolist(), outs, batch.targets, sizes, strict=True):
            out = HOIDetections(*(t.detach().cpu() for t in out))
            cls = table[out.objects, out.labels]
            keep = cls >= 0
            h, o = out.pairing[0][keep], out.pairing[1][keep]
            det_boxes = torch.cat([out.boxes[h], out.boxes[o]], 1).double().numpy()
            hoi = target["hoi"].cpu()
            gt_cls = table[target["labels"].cpu()[hoi[:, 1]], hoi[:, 2]] if len(hoi) else torch.zeros(0).long()
            gtb = target["boxes"].cpu()
            gt_boxes = torch.cat([gtb[hoi[:, 0]], gtb[hoi[:, 1]]], 1).double().numpy() if len(hoi) else np.zeros((0, 8))
            record = {
                "image": idx, "det_class": cls[keep].numpy(), "det_boxes": det_boxes,
                "det_scores": out.scores[keep].double().numpy(), "gt_class": gt_cls.numpy(), "gt_boxes": gt_boxes,
            }  # fmt: skip
            if self.eval_protocol == "vcoco":
                record.update(self._vcoco_record(idx, out, size))
            self._eval_records.append(record)

    def _vcoco_record(self, idx: int, out: HOIDetections, size: list[float]) -> dict[str, np.ndarray]:
        """Pairs of one image for the V-COCO conversion: boxes in original pixels, (P, K) scores (NaN: unscored).

        Raises:
            ValueError: If no V-COCO ground truth is set or the index is not one of its images.
        """
        gt = self.vcoco_gt
        if gt is None:
            raise ValueError("eval_protocol 'vcoco' needs V-COCO ground truth (set_vcoco_ground_truth or HOIData)")
        if not 0 <= idx < len(gt.images):
            raise ValueError(f"dataset index {idx} is not one of the {len(gt.images)} V-COCO ground-truth images")
        ow, oh = gt.images[idx].size
        h, w = size
        scale = np.array([ow / w, oh / h, ow / w, oh / h])
        boxes = out.boxes.double().numpy() * scale
        sub, obj = out.pairing[0].numpy(), out.pairing[1].numpy()
        pairs, inverse = np.unique(np.stack([sub, obj], 1).reshape(-1, 2), axis=0, return_inverse=True)
        humans, pair_humans = np.unique(pairs[:, 0], return_inverse=True)
        scores = np.full((len(pairs), len(gt.actions)), np.nan)
        scores[inverse.reshape(-1), out.labels.numpy()] = out.scores.double().numpy()
        return {
            "vcoco_human_boxes": boxes[humans], "vcoco_pair_humans": pair_humans.reshape(-1),
            "vcoco_object_boxes": boxes[pairs[:, 1]], "vcoco_pair_scores": scores,
        }  # fmt: skip

    def vcoco_role_metrics(self, records: list[dict[str, np.ndarray]]) -> dict[int, Any]:
        """V-COCO role AP (scenario 1 and 2, :class:`~tenfold.hoi.vcoco_eval.VCOCOMetrics`) of collected records.

        Only the images of ``records`` are evaluated (a subset of the ground truth: a DDP shard, a short val).

        Raises:
            ValueError: If no V-COCO ground truth is set.
        """
        gt = self.vcoco_gt
        if gt is None:
            raise ValueError("eval_protocol 'vcoco' needs V-COCO ground truth (set_vcoco_ground_truth or HOIData)")
        records = sorted({int(r["image"]): r for r in records}.items())
        sub = type(gt)(gt.actions, gt.roles, tuple(gt.images[i] for i, _ in records))
        dets = pairs_to_vcoco_detections(
            [gt.images[i].image_id for i, _ in records], [r["vcoco_human_boxes"] for _, r in records],
            [r["vcoco_pair_humans"] for _, r in records], [r["vcoco_object_boxes"] for _, r in records],
            [r["vcoco_pair_scores"] for _, r in records], gt.roles,
        )  # fmt: skip
        return {s: vcoco_role_ap(sub, dets, scenario=s) for s in (1, 2)}

    def evaluate_records(self, records: list[dict[str, np.ndarray]]) -> HOIMetrics:
        """UPT-protocol HICO metrics of collected per-image records (see :meth:`_eval_step`)."""
        assert self.info is not None
        c = self.info.num_hois

        def cat(key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            parts = [r[key] for r in records]
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

        det_image = np.concatenate([np.full(len(r["det_class"]), r["image"]) for r in records] or [np.zeros(0)])
        gt_image = np.concatenate([np.full(len(r["gt_class"]), r["image"]) for r in records] or [np.zeros(0)])
        counts = None if self.train_counts is None else self.train_counts.cpu().numpy()
        return upt_evaluate(
            det_image.astype(np.int64), cat("det_class", (0,), np.int64), cat("det_boxes", (0, 8), np.float64),
            cat("det_scores", (0,), np.float64), gt_image.astype(np.int64), cat("gt_class", (0,), np.int64),
            cat("gt_boxes", (0, 8), np.float64), num_classes=c, train_counts=counts,
            rare_threshold=self.hparams.rare_threshold,
        )  # fmt: skip

    def _log_metrics(self, stage: str) -> None:
        records = _gather(self._eval_records)
        self._eval_records = []
        metrics = self.evaluate_records(records)
        self.log(f"{stage}/map", float(metrics.mAP), prog_bar=stage == "val")
        self.log(f"{stage}/map_rare", float(metrics.mAP_rare))
        self.log(f"{stage}/map_non_rare", float(metrics.mAP_non_rare))
        if self.eval_protocol == "vcoco":
            for s, m in self.vcoco_role_metrics(records).items():
                self.log(f"{stage}/role_ap_s{s}", float(m.mAP), prog_bar=stage == "val" and s == 1)

    def validation_step(self, batch: HOIBatch, batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch)

    def test_step(self, batch: HOIBatch, batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch)

    def on_validation_epoch_start(self) -> None:  # noqa: D102
        self._eval_records = []

    def on_test_epoch_start(self) -> None:  # noqa: D102
        self._eval_records = []

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._log_metrics("test")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move images and sizes; targets and detections move in the steps (they are lists of tuples)."""
        if isinstance(batch, HOIBatch):
            return batch._replace(images=batch.images.to(device), image_sizes=batch.image_sizes.to(device))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
