"""``tenfold export-student``: the student of a distillation checkpoint, alone, as a safetensors file."""

from __future__ import annotations

import os
from pathlib import Path

from tenfold.utils.checkpoint import atomic_write, load_checkpoint

__all__ = ["export_student"]


def export_student(checkpoint: str | os.PathLike, out: str | os.PathLike, verify: bool = True) -> Path:
    """Write the student's weights of a distillation checkpoint to ``out`` (safetensors).

    The file holds the plain student ``state_dict`` (no teacher, connectors or ``student.`` prefix), so it loads
    with ``strict=True`` into the bare model, e.g.
    ``timm.create_model("resnet8x4", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=out,
    num_classes=10))`` (give ``num_classes`` in the overlay too when it differs from the architecture's default
    configuration; otherwise timm treats the difference as fine-tuning and re-initialises the classifier).

    Args:
        checkpoint: a checkpoint written by a distillation run (``DistillationTask``).
        out: the ``.safetensors`` file to write; it must not exist.
        verify: build the bare student from the checkpoint's hyper-parameters and load the weights strictly
            before writing.

    Returns:
        The written path.

    Raises:
        FileExistsError: ``out`` exists (nothing is overwritten).
        ValueError: the checkpoint is not a distillation checkpoint, or the weights do not fit the student.
    """
    import timm
    from safetensors.torch import save_file

    import tenfold.models  # noqa: F401
    from tenfold.classification.task import load_state_dict_strict

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {str(out)!r}")
    if out.exists():
        raise FileExistsError(f"{str(out)!r} already exists; choose another output path")
    ckpt = load_checkpoint(checkpoint)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    student = {k[len("student.") :]: v.contiguous() for k, v in (state or {}).items() if k.startswith("student.")}
    if not student:
        raise ValueError(f"{str(checkpoint)!r} is not a distillation checkpoint: it holds no student.* weights")
    hparams = ckpt.get("hyper_parameters", {})
    if verify:
        name = hparams.get("student")
        if not name:
            raise ValueError(f"{str(checkpoint)!r} does not name its student architecture (hyper_parameters)")
        model = timm.create_model(name, num_classes=hparams["num_classes"], **(hparams.get("student_kwargs") or {}))
        load_state_dict_strict(model, student, source=str(checkpoint))
    metadata = {"architecture": str(hparams.get("student", "")), "num_classes": str(hparams.get("num_classes", ""))}
    with atomic_write(out) as tmp:
        save_file(student, str(tmp), metadata=metadata)
    return out
