"""The retriever's bi-encoder: CLIP's image and text towers (transformers, torch).

`ClipDocumentEncoder.from_pretrained(hub id or local directory)` loads a published CLIP
(default openai/clip-vit-base-patch32) with its own tokenizer and preprocessing;
`ClipDocumentEncoder.tiny(seed)` builds the same architecture tiny and randomly
initialised (no download: the vectors mean nothing, but every code path runs), with the
4M WordPiece vocabulary shipped with fourm as its tokenizer.

Every vector it returns is L2-normalised; a document's vector is the mean of its parts'
(`documents.document_vectors`). torch and transformers (the `[pseudolabel]` extra) are
imported when an encoder is built, never on `import fourm.retrieval`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fourm.errors import UsageError
from fourm.retrieval import documents
from pseudolabel import torch_model
from pseudolabel.clip_features import CLIP_MEAN, CLIP_STD
from pseudolabel.torch_model import TorchLabeler

DEFAULT_ENCODER = "openai/clip-vit-base-patch32"
TINY = torch_model.TINY  # the name the tiny random encoder goes by (manifests, --encoder)
TINY_PROJECTION_DIM = 32


def _import_torch():
  try:
    return torch_model.import_torch()
  except UsageError as error:
    raise UsageError("the retriever's CLIP encoder needs torch and transformers; install "
                     "them with: pip install 'fourm[pseudolabel]'") from error


def _load(loader, name_or_path: str, what: str):
  """`loader.from_pretrained`, a failure to fetch turned into one clear error."""
  return torch_model.load_model("retriever encoder", loader, name_or_path,
                                what=f"the CLIP {what} of", flag="--encoder")


def tiny_clip_config(vocab_size: int, *, bos: int, eos: int, pad: int):
  """A CLIP of two 32-wide layers per tower; its vision tower is the tiny one the CLIP
  labeler tests use (64 px, 16 px patches)."""
  from pseudolabel import tiny
  from transformers import CLIPConfig
  text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
              bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
  return CLIPConfig(text_config=text, vision_config=tiny.clip_config().to_dict(),
                    projection_dim=TINY_PROJECTION_DIM)


def _wordpiece_tokenizer():
  """The 4M WordPiece vocabulary as a transformers tokenizer that wraps each text in
  [SOS] ... [EOS] (CLIP pools its text at the end token)."""
  import tokenizers
  from tokenizers.processors import TemplateProcessing
  from transformers import PreTrainedTokenizerFast
  from tokenizers_vq import text
  # A fresh copy: the cached one is shared with masking and must keep its behaviour.
  wordpiece = tokenizers.Tokenizer.from_file(text.default_vocab_path())
  ids = text.special_tokens()
  wordpiece.post_processor = TemplateProcessing(
      single=f"{text.SOS} $A {text.EOS}", special_tokens=[(text.SOS, ids.sos),
                                                          (text.EOS, ids.eos)])
  return PreTrainedTokenizerFast(tokenizer_object=wordpiece, bos_token=text.SOS,
                                 eos_token=text.EOS, pad_token=text.PAD,
                                 unk_token=text.UNK), ids


class ClipDocumentEncoder(TorchLabeler):
  """Images and texts -> unit vectors in CLIP's shared space; records -> documents."""

  def __init__(self, model, tokenizer, *, name: str, input_size: int, mean, std,
               device: str = "cpu"):
    super().__init__(model, name=name, input_size=input_size, mean=mean, std=std,
                     device=device)
    self.tokenizer = tokenizer
    self.dimension = int(model.config.projection_dim)
    self.max_text_tokens = int(model.config.text_config.max_position_embeddings)
    # The square grid of patches the image tower sees (query dropout hides whole ones).
    self.patch_grid = self.input_size // int(model.config.vision_config.patch_size)

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_ENCODER,
                      device: str = "cpu") -> ClipDocumentEncoder:
    _, transformers = _import_torch()
    if name_or_path == TINY:
      return cls.tiny(device=device)
    model = _load(transformers.CLIPModel, name_or_path, "model")
    tokenizer = _load(transformers.AutoTokenizer, name_or_path, "tokenizer")
    preprocessing = torch_model.preprocessing_config(name_or_path)
    mean, std = cls.normalization(preprocessing, CLIP_MEAN, CLIP_STD)
    input_size = torch_model.input_size_of(preprocessing, model.config.vision_config.image_size)
    return cls(model, tokenizer, name=name_or_path, input_size=input_size, mean=mean,
               std=std, device=device)

  @classmethod
  def tiny(cls, seed: int = 0, device: str = "cpu") -> ClipDocumentEncoder:
    """Tiny and random, the same weights for the same seed (a resumed index build must
    encode as the first run did)."""
    torch, transformers = _import_torch()
    tokenizer, ids = _wordpiece_tokenizer()
    config = tiny_clip_config(tokenizer.vocab_size, bos=ids.sos, eos=ids.eos, pad=ids.pad)
    with torch.random.fork_rng(devices=[]):  # leave the caller's torch RNG as it was
      torch.manual_seed(seed)
      model = transformers.CLIPModel(config)
    return cls(model, tokenizer, name=TINY, input_size=config.vision_config.image_size,
               mean=CLIP_MEAN, std=CLIP_STD, device=device)

  def _features(self, output) -> np.ndarray:
    # transformers 5 returns an output whose pooler_output is projected; 4.x a tensor.
    tensor = output if isinstance(output, self.torch.Tensor) else output.pooler_output
    return documents.normalize(tensor.float().cpu().numpy())

  def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 [H, W, 3] images -> float32 [N, D] unit vectors."""
    if not len(images):
      return np.zeros((0, self.dimension), np.float32)
    with self.torch.inference_mode():
      return self._features(self.model.get_image_features(pixel_values=self.pixels(images)))

  def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
    """Texts -> float32 [N, D] unit vectors (each cut to the tower's token limit)."""
    if not len(texts):
      return np.zeros((0, self.dimension), np.float32)
    tokens = self.tokenizer(list(texts), padding=True, truncation=True,
                            max_length=self.max_text_tokens, return_tensors="pt")
    with self.torch.inference_mode():
      return self._features(self.model.get_text_features(
          input_ids=tokens["input_ids"].to(self.device),
          attention_mask=tokens["attention_mask"].to(self.device)))

  def encode_parts(self, samples: Sequence[Mapping[str, Any]],
                   parts: Sequence[str] = documents.PARTS) -> tuple[np.ndarray, np.ndarray]:
    """Records or queries -> (float32 [N, P, D] part vectors, zero where absent; bool
    [N, P] which parts each has), P = len(documents.PARTS)."""
    present = np.stack([documents.present_parts(s, parts) for s in samples]) if samples \
        else np.zeros((0, len(documents.PARTS)), bool)
    vectors = np.zeros((len(samples), len(documents.PARTS), self.dimension), np.float32)
    encoders = {documents.IMAGE: self.encode_images, documents.TEXT: self.encode_texts}
    for p, name in enumerate(documents.PARTS):
      rows = np.flatnonzero(present[:, p])
      if rows.size:
        vectors[rows, p] = encoders[name]([samples[i][name] for i in rows])
    return vectors, present

  def encode_documents(self, samples: Sequence[Mapping[str, Any]],
                       parts: Sequence[str] = documents.PARTS) -> tuple[np.ndarray, np.ndarray]:
    """Records or queries -> (float32 [N, D] document vectors, bool [N, P] parts). Each
    must hold at least one of `parts`."""
    vectors, present = self.encode_parts(samples, parts)
    return documents.document_vectors(vectors, present), present
