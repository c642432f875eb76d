"""fourm: any-to-any masked multimodal modeling (4M-style) in JAX/Flax."""

__version__ = "0.1.0"
