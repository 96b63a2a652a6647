"""longwriter: the LongWriter method (arXiv 2408.07055) as a reproducible DVC pipeline."""

__version__ = "0.1.0"
