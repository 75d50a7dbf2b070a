"""``tenfold fit|validate|test``: LightningCLI with tenfold's run folders, checkpoints and logs.

What this adds to LightningCLI:

* every run gets its own folder ``runs/<recipe>/<time>`` (never overwritten); ``--ckpt_path last`` resumes the
  latest run of the recipe (or ``--run_dir``'s) exactly: weights, optimiser, scheduler, loops, data order, RNG;
* checkpoints every ``--checkpoint.every_n_train_steps`` steps and at the end, written atomically and read back
  with ``weights_only=True``;
* CSV and TensorBoard logs in ``<run>/logs/version_N``, ``<run>/metrics.json`` with the final metrics;
* ``--compile true`` compiles the task's networks with ``torch.compile``
  (:class:`~tenfold.engine.callbacks.CompileModel`: in place, checkpoint keys unchanged, eager fallback with one
  warning, compiled graphs cached between runs);
* recipe errors (unknown keys, wrong types) stop the run before any work with a short message that names the key
  and suggests the closest valid ones (``did you mean --model.optim.lr?``) instead of the full usage text.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn, get_args, get_origin

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from tenfold.engine.callbacks import CompileModel, FinalCheckpoint, FinalMetrics, RNGState
from tenfold.engine.checkpoint_io import SafeCheckpointIO
from tenfold.engine.rundir import ENV_RUN_DIR, recipe_run_name, resolve_run_dir
from tenfold.utils.checkpoint import load_checkpoint

__all__ = ["TenfoldCLI", "TRAINER_DEFAULTS"]

TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "devices": "auto",
    # our data modules shard by rank themselves (tenfold.data.sampling) so runs resume exactly mid-epoch
    "use_distributed_sampler": False,
    "log_every_n_steps": 10,
}


class TenfoldArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with short errors: the problem, the closest valid keys and the ``--help`` tip.

    jsonargparse prints the whole usage (about 70 lines for a recipe) and a nested union trace before the one line
    that matters; users of git and pip expect ``error: ... did you mean ...?``.
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # noqa: D102
        if not self.exit_on_error or os.environ.get("TENFOLD_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {short_parse_error(message, parser)}\n")
        sys.stderr.write(f"tip: `{prog} --help` lists every accepted key\n")
        self.exit(2)


_STRUCTURE = re.compile(
    r"^(- )?(Does not validate against any|Subtypes:|Errors:|Problem with given class_path"
    r"|Expected a <class 'NoneType'>|Given value type:|Given value:|Parser key )"
)


def short_parse_error(message: str, parser: Any) -> str:
    """One line (plus suggestions) for a jsonargparse error ``message``: the offending key and the innermost reason.

    Nested union errors (``--model.optim.lrr``) are unwound to the class that refused the key; an unknown option
    gets up to three close matches among the keys that class (or ``parser``) accepts.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = [m.group(1) for line in lines if (m := re.match(r'^Parser key "([^"]+)":', line))]
    classes = [m.group(1) for line in lines if (m := re.search(r"class_path '([\w.]+)'", line))]
    reasons = [line.removeprefix("- ") for line in lines if not _STRUCTURE.match(line)]
    given = next((m.group(1) for line in lines if (m := re.match(r"^Given value: (.*)", line))), None)
    unknown = re.match(r"^unrecognized arguments: (\S+)", lines[0]) if lines else None
    if unknown:  # a key no parser level knows: compare with the subcommand's own options
        options = [opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")]
        return _with_suggestions(f"unknown option {unknown.group(1)}", unknown.group(1), options)
    if not keys or not reasons:
        return message
    prefix = "--" + ".".join(keys)
    reason = reasons[0]
    refused = re.match(r"^Option '([^']+)' is not accepted", reason)
    if refused and classes:
        name = refused.group(1)
        accepted = [f"{prefix}.{key}" for key in accepted_keys(classes[-1])]
        return _with_suggestions(f"{prefix}.{name}: not an option of {classes[-1]}", f"{prefix}.{name}", accepted)
    if given is not None and "Got value" not in reason and not given.startswith("NestedArg("):
        reason += f"; got {given!r}"
    return f"{prefix}: {reason}"


def _with_suggestions(text: str, wrong: str, candidates: list[str]) -> str:
    # the last segment decides (lrr -> optim.lr, max_epochz -> max_epochs); the whole key only when no segment is
    # close (modle.lr -> model), since a shared prefix makes every key of a group look alike
    leaf = wrong.rsplit(".", 1)[-1]
    by_leaf = {c: c.rsplit(".", 1)[-1] for c in candidates}
    best = difflib.get_close_matches(leaf, list(set(by_leaf.values())), n=2, cutoff=0.7)
    close = [c for c in candidates if by_leaf[c] in best]
    close.sort(key=lambda c: (best.index(by_leaf[c]), len(c)))
    if not close:
        close = difflib.get_close_matches(wrong, candidates, n=2, cutoff=0.7)
    return f"{text}; did you mean {' or '.join(close[:3])}?" if close else text


def accepted_keys(class_path: str) -> list[str]:
    """Dotted keys a LightningCLI ``init_args`` block of ``class_path`` accepts, nested dataclasses expanded."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    return _keys_of(cls)


def _keys_of(cls: Any, prefix: str = "", depth: int = 0) -> list[str]:
    if dataclasses.is_dataclass(cls):
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        hints = _type_hints(cls)
    else:
        params = inspect.signature(cls).parameters.values()
        fields = {p.name: p.annotation for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        hints = _type_hints(cls.__init__)
    keys = []
    for field in fields:
        keys.append(prefix + field)
        hint = hints.get(field)
        nested = [
            t for t in (get_args(hint) if get_origin(hint) is not None else (hint,)) if dataclasses.is_dataclass(t)
        ]
        if nested and depth < 2:
            keys += _keys_of(nested[0], f"{prefix}{field}.", depth + 1)
    return keys


def _type_hints(obj: Any) -> dict[str, Any]:
    try:
        import typing

        return typing.get_type_hints(obj)
    except Exception:  # unresolvable forward references: suggestions then skip nested keys
        return {}


class TenfoldCLI(LightningCLI):
    """LightningCLI with run folders, safe atomic checkpoints, exact resume and default loggers."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        self.run_dir: Path | None = None
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            parser_class=TenfoldArgumentParser,
            parser_kwargs={"prog": "tenfold", **kwargs.pop("parser_kwargs", {})},
            seed_everything_default=0,
            save_config_kwargs={"overwrite": False},
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Run-folder options and the periodic checkpoint callback."""
        parser.add_argument("--run_dir", type=str | None, default=None, help="Folder of this run (must be new).")
        parser.add_argument("--runs_root", type=str, default="runs", help="Parent of the automatic run folders.")
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Name of the run group (default: <family>/<stem> for configs/<family>/<stem>.yaml, else the stem).",
        )
        parser.add_argument(
            "--compile",
            type=bool,
            default=False,
            help="torch.compile the task's networks (tenfold.engine.callbacks.CompileModel with its defaults; add "
            "that callback to trainer.callbacks instead to pick modules or compiler options).",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.every_n_train_steps": 500,
                "checkpoint.filename": "step{step:07d}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_top_k": 1,
            }
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyper-parameters out of the checkpoint before anything else: make a missing,
        # corrupt or unsafe file fail here with a clear message instead of a raw unpickling error.
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            load_checkpoint(ckpt_path)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Pick the run folder (creating it on rank 0) and point checkpoints there."""
        cfg = self.config[self.subcommand]
        name = cfg.run_name or _recipe_name(cfg)
        run_dir, ckpt_path = resolve_run_dir(cfg.runs_root, name, cfg.run_dir, cfg.ckpt_path)
        self.run_dir = run_dir
        os.environ[ENV_RUN_DIR] = str(run_dir)  # DDP children launched by Lightning re-run this CLI
        cfg.ckpt_path = ckpt_path
        cfg.run_dir = str(run_dir)
        cfg.checkpoint.dirpath = str(run_dir / "checkpoints")
        cfg.trainer.default_root_dir = str(run_dir)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Add the default loggers, the safe checkpoint IO and the engine callbacks."""
        assert self.run_dir is not None
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("logger") in (None, True):
            version = _next_version(self.run_dir / "logs")
            kwargs["logger"] = [
                CSVLogger(self.run_dir, name="logs", version=version),
                TensorBoardLogger(self.run_dir, name="logs", version=version, default_hp_metric=False),
            ]
        plugins = trainer_cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())
        kwargs["plugins"] = plugins
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        if self._get(self.config_init, "compile", default=False) and not any(
            isinstance(c, CompileModel) for c in callbacks
        ):
            callbacks.append(CompileModel())
        kwargs["callbacks"] = [*callbacks, RNGState(), FinalCheckpoint(), FinalMetrics(self.run_dir / "metrics.json")]
        return super().instantiate_trainer(**kwargs)


def _next_version(logs: Path) -> str:
    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        # only rank 0 writes logs; other ranks must not race it for a number
        return "version_0"
    taken = [int(p.name.split("_", 1)[1]) for p in logs.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return f"version_{max(taken, default=-1) + 1}"


def _recipe_name(cfg: Any) -> str:
    configs = cfg.get("config") or []
    if configs:
        last = configs[-1]
        return recipe_run_name(str(getattr(last, "absolute", None) or getattr(last, "relative", None) or str(last)))
    model = cfg.get("model")
    class_path = getattr(model, "class_path", None) if model is not None else None
    return (class_path or "run").rsplit(".", 1)[-1].lower()


def run_lightning_cli(args: list[str] | None) -> TenfoldCLI:
    """Run ``fit``/``validate``/``test``/``predict`` with ``args`` (the words after ``tenfold``; None: sys.argv)."""
    try:
        return TenfoldCLI(args=args)
    finally:
        os.environ.pop(ENV_RUN_DIR, None)
