"""Flax NNX models that load Hugging Face checkpoints: BERT, ViT and CLIP's vision tower.

Each model lives in its own package with ``modeling.py`` (config dataclass
and modules) and ``params.py`` (checkpoint loading and the SEVEN
prunable-leaf preset)::

  from seven_jax.models import bert, vit, clip_vision
"""

from seven_jax.models import bert
from seven_jax.models import clip_vision
from seven_jax.models import vit
