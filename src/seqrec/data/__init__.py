"""Reading, cleaning, id mapping, splitting and batching of interaction logs."""
