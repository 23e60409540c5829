"""voxmill stages and engine: raw speech in, WebDataset shards out."""
__version__ = "0.1.0"
