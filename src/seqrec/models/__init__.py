"""Sequence encoders. Each file holds one model: its frozen config and its nn.Module."""
