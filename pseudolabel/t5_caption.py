"""T5-XXL caption embeddings (4M-21's t5_caption): the encoder's states, one per token.

This labeler reads a record's *caption*, not its image: `__call__(captions)` takes
strings and returns, for each, float32 [L, 4096]: the last hidden states of the T5 v1.1
XXL encoder (after its final LayerNorm) at the caption's L tokens, the closing `</s>`
included, at most 77 (the t5_caption modality's length; longer captions are truncated
and still end in `</s>`). A batch is padded to its longest caption and each caption's
padding is masked out of attention and cut from its output, so a caption's states do
not depend on the batch it came in.

The reference stores T5 embeddings with a validity mask and keeps only the valid
positions (apple/ml-4m, CaptionEmbTransform: `emb[mask_valid]`), with at most 77
tokens; its code does not show the extraction. `fourm pseudolabel` hands it records
(`reads`, `label_records`): a record without a caption gets no t5_caption (None), which
is not a failure.

The XXL encoder has 4.7 B parameters (19 GB in float32): pass `dtype="bfloat16"` to
`from_pretrained` on a GPU; outputs are float32 either way. Reading the checkpoint's
`spiece.model` needs the sentencepiece package unless a `tokenizer.json` is beside it.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pseudolabel import DEFAULT_MODELS, tiny_4m21
from pseudolabel import torch_model

DEFAULT_MODEL = DEFAULT_MODELS["t5_caption"]   # T5 v1.1 XXL
MAX_TOKENS = 77           # t5_caption's max_length, as the reference


class T5CaptionLabeler:
  """captions -> t5_caption float32 [L, D] each (D = 4096 for T5-XXL), L <= max_tokens."""

  reads = ("caption",)    # what `fourm pseudolabel` hands it, instead of the image

  def __init__(self, model, tokenizer, *, name: str, device: str = "cpu",
               max_tokens: int = MAX_TOKENS):
    torch, _ = torch_model.import_torch()
    self.torch = torch
    self.device = torch.device(device)
    self.model = model.to(self.device).eval()
    self.tokenizer, self.name, self.max_tokens = tokenizer, name, max_tokens

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                      dtype: str | None = None, max_tokens: int = MAX_TOKENS) -> T5CaptionLabeler:
    torch, transformers = torch_model.import_torch()
    encoder = transformers.T5EncoderModel
    if dtype is not None:  # load straight into the dtype: XXL in float32 is 19 GB
      encoder = types.SimpleNamespace(from_pretrained=functools.partial(
          transformers.T5EncoderModel.from_pretrained, dtype=getattr(torch, dtype)))
    model = torch_model.load_model("t5_caption", encoder, name_or_path)
    tokenizer = torch_model.load_model("t5_caption", transformers.AutoTokenizer, name_or_path)
    return cls(model, tokenizer, name=name_or_path, device=device, max_tokens=max_tokens)

  @classmethod
  def tiny(cls, device: str = "cpu", size: str = "tiny") -> T5CaptionLabeler:
    _, transformers = torch_model.import_torch()
    tokenizer = tiny_4m21.t5_tokenizer()
    model = transformers.T5EncoderModel(tiny_4m21.t5_config(size, vocab_size=len(tokenizer)))
    return cls(model, tokenizer, name=torch_model.TINY, device=device)

  def token_ids(self, caption: str) -> list[int]:
    """The caption's token ids as the encoder reads them (truncated, `</s>` last)."""
    return self.tokenizer(caption, truncation=True, max_length=self.max_tokens).input_ids

  def label_records(self, samples: Sequence[Mapping[str, Any]]) -> list[np.ndarray | None]:
    """The t5_caption of each record's caption; None for a record that has none (it has
    nothing to embed: no t5_caption, and no failure)."""
    captions = [sample.get("caption") for sample in samples]
    todo = [i for i, caption in enumerate(captions) if caption is not None]
    out: list[np.ndarray | None] = [None] * len(samples)
    for i, states in zip(todo, self([captions[i] for i in todo])):
      out[i] = states
    return out

  def __call__(self, captions: Sequence[str]) -> list[np.ndarray]:
    for caption in captions:
      if not isinstance(caption, str):
        raise ValueError(f"expected a caption (str), got {type(caption).__name__}")
    if not captions:
      return []
    batch = self.tokenizer(list(captions), padding=True, truncation=True,
                           max_length=self.max_tokens, return_tensors="pt").to(self.device)
    with self.torch.inference_mode():
      states = self.model(input_ids=batch.input_ids,
                          attention_mask=batch.attention_mask).last_hidden_state
    states = states.float().cpu().numpy()
    valid = batch.attention_mask.bool().cpu().numpy()
    return [s[v].astype(np.float32) for s, v in zip(states, valid)]
