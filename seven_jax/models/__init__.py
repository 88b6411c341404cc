"""Flax NNX models that load Hugging Face checkpoints: BERT, ViT and CLIP's vision tower.

Each model lives in its own package with ``modeling.py`` (config dataclass
and modules) and ``params.py`` (checkpoint loading and the SEVEN
prunable-leaf preset)::

  from seven_jax.models import bert, vit, clip_vision

What the models share is written once: ``_layers.py`` (activations, dense /
LayerNorm / patch-conv factories, multi-head attention, image input checks)
and ``_hf.py`` (``config.json`` and weights I/O with errors that name the file
and the field, config validation, ``from_pretrained``, the prunable tree).
"""

from seven_jax.models import bert
from seven_jax.models import clip_vision
from seven_jax.models import vit
