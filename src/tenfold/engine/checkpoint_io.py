"""Lightning checkpoint IO that writes atomically and loads only tensors and plain values."""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tenfold.utils.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["SafeCheckpointIO"]


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes and ``weights_only`` loading with clear errors.

    Remote paths (``s3://``...) fall back to Lightning's own transactional writer. Lightning's writer is not used for
    local files because it is atomic only within one file system: fsspec's local transaction writes to the system
    temporary folder and then ``shutil.move``s the file, which becomes a copy (a crash can leave a truncated
    checkpoint) whenever ``/tmp`` and the run folder are on different volumes, as on most clusters. Ours writes the
    temporary file beside the target and renames it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to a temporary file beside ``path``, then rename it."""
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_checkpoint(checkpoint, path)
        return None

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> Any:
        """Read ``path`` safely (``weights_only=True``); see :func:`tenfold.utils.checkpoint.load_checkpoint`."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(path, map_location=map_location or "cpu")
