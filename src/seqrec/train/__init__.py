"""One plain PyTorch training loop for every model."""
