"""sftpack's library: schemas, templating and masking, packing, shards, stats, training."""

__version__ = "0.1.0"
