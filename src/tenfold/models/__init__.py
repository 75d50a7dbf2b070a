"""tenfold's architectures, registered with timm: ``import tenfold.models`` then ``timm.create_model(name)``.

Each family lives in one module; importing it here runs its ``@register_model`` functions. A new family adds
one import line below.
"""

from __future__ import annotations

import timm
from timm.models import get_arch_name, model_entrypoint

from tenfold.models import (
    lightvit,  # noqa: F401  (registers LightViT-T/S/B)
    nas_macro,  # noqa: F401  (registers the NAS-Bench-Macro network searched by GINAS)
    resnet_cifar,  # noqa: F401  (registers the CIFAR ResNets / WRNs)
    scalenet,  # noqa: F401  (registers the networks found by ScaleNet's search)
)

__all__ = ["list_models"]


def list_models() -> list[str]:
    """Sorted names of the models that tenfold's own modules register with timm (timm's own are excluded)."""
    prefix = __name__ + "."
    return sorted(
        name for name in timm.list_models() if model_entrypoint(get_arch_name(name)).__module__.startswith(prefix)
    )
