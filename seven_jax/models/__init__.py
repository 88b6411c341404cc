"""Flax NNX models that load Hugging Face checkpoints: BERT and ViT."""
