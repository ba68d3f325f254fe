"""DRDM training: configuration, data, augmentations, losses, the training loop and evaluation."""
