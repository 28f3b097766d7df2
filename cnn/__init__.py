"""CNN embeddings: torchvision / EfficientNet-Lite backbones as a scikit-learn transformer, fine-tuning, heat maps."""
