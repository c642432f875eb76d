"""Tokenizers that turn modalities into the discrete tokens 4M models: a VQ-VAE per image
modality (`vqvae.py`, `quantizer.py`, `modality_io.py`; trained by `train.py`, applied to
datasets by `tokenize.py`, inverted by `detokenize.py`), MLP VQ-VAEs of feature vectors
for 4M-21's global tokens (`mlp_vq.py`, `global_tokens.py`) and the WordPiece text and box
tokenizers (`text.py`, `boxes.py`, `text_train.py`)."""
