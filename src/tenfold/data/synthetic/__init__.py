"""Synthetic datasets: seeded, deterministic, vectorised, no download.

One module per data kind: :mod:`.classification` (scenes with one labelled object, and the in-memory
datasets), :mod:`.segmentation` (multi-object scenes with class masks), :mod:`.hoi` (persons, objects, boxes
and verbs), :mod:`.speech` (speech-like audio in noise) and :mod:`.digits` (scikit-learn's bundled digits).
They share :mod:`.seeding` (seeds and argument checks), :mod:`.prototypes` (what each class looks like) and
:mod:`.render` (the scene renderer).

Every generator follows the same contract:

* ``seed`` defines the *task*: what each class looks like (its shape, colour and texture). Two calls with the
  same ``seed`` and number of classes describe the same classes, in every generator that has classes.
* ``split`` (``"train"``, ``"val"`` or ``"test"``) selects a separate stream of samples of that task. The sample
  stream's seed is derived from ``(seed, generator kind, split)`` through a fixed integer mix (SplitMix64), not
  through Python's randomised ``hash``, so it is the same in every process and on every machine.
* The same ``(seed, split, n)`` and keywords give bit-identical tensors. Output for ``n`` samples is not a prefix
  of the output for ``n + 1`` samples: each call draws its per-sample factors for the whole batch at once.
* A local :class:`torch.Generator` drives all randomness; the global RNG is never touched.
"""

from tenfold.data.synthetic.classification import BuiltinClassification, make_classification
from tenfold.data.synthetic.digits import DigitsClassification, load_digits
from tenfold.data.synthetic.hoi import make_hoi
from tenfold.data.synthetic.prototypes import SHAPE_NAMES, TEXTURE_NAMES, ClassPrototypes, class_prototypes
from tenfold.data.synthetic.seeding import SPLITS
from tenfold.data.synthetic.segmentation import make_segmentation
from tenfold.data.synthetic.speech import make_speech

__all__ = [
    "SHAPE_NAMES",
    "SPLITS",
    "TEXTURE_NAMES",
    "BuiltinClassification",
    "ClassPrototypes",
    "DigitsClassification",
    "class_prototypes",
    "load_digits",
    "make_classification",
    "make_hoi",
    "make_segmentation",
    "make_speech",
]
