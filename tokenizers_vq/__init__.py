"""Tokenizers that turn modalities into the discrete tokens 4M models: VQ-VAEs per image
modality (a later issue) and the WordPiece text tokenizer (`text.py`)."""
