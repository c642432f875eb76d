"""`fourm tokenize --data DIR --tokenizers WORKDIR... --out DIR`: token records of a dataset.

Each trained VQ-VAE (a `fourm tokenizer train` workdir) turns its raw modality into the
registry's token-grid modality made from it (rgb -> tok_rgb), int32 grids. Images are
center-cropped and resized to the tokenizer's resolution first, as the data pipeline does
for evaluation, so the tokens describe the same pixels the 4M pipeline reads beside them
(with augment off). Records are written side by side with the source
(`fourm/data/derived.py`): same shards, same order, resumable shard by shard; a second run
skips finished shards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from fourm import modalities
from fourm.data import derived
from fourm.errors import RecordError, UsageError
from tokenizers_vq.train import load_tokenizer
from tokenizers_vq.train_step import VQTokenizer


def _parse(entry: str) -> tuple[str | None, str]:
  """'WORKDIR' or 'tok_rgb=WORKDIR' (the name is then checked against the checkpoint)."""
  name, sep, path = entry.partition("=")
  return (name, path) if sep else (None, entry)


def _is_variant_of(name: str, base: str) -> bool:
  return modalities.is_known(name) and modalities.get(name).base_name == base


def load_tokenizers(entries: Sequence[str]) -> dict[str, tuple[str, VQTokenizer]]:
  """{tok_<modality>: (workdir, tokenizer)}, checked against the modality registry."""
  loaded: dict[str, tuple[str, VQTokenizer]] = {}
  for entry in entries:
    expected, workdir = _parse(entry)
    tokenizer = load_tokenizer(workdir)
    try:
      name = modalities.grid_modality_of(tokenizer.raw_name)
    except KeyError:
      raise UsageError(f"{workdir}: a tokenizer for {tokenizer.raw_name!r}, which no "
                       "token-grid modality of the registry is made from") from None
    if expected is not None and expected != name and _is_variant_of(expected, name):
      name = expected  # tok_rgb@448=DIR: the 448 px grid of a model that reads two sizes
    if expected is not None and expected != name:
      raise UsageError(f"--tokenizers {entry}: that checkpoint is a tokenizer for "
                       f"{tokenizer.config.modality!r} (it makes {name}), not {expected}")
    vocab = modalities.get(name).vocab_size
    if tokenizer.config.vocab_size > vocab:
      raise UsageError(f"{workdir}: its vocabulary of {tokenizer.config.vocab_size} does not "
                       f"fit {name}'s {vocab} in the modality registry")
    if name in loaded:
      raise UsageError(f"two tokenizers make {name}: {loaded[name][0]} and {workdir}")
    loaded[name] = (os.path.abspath(workdir), tokenizer)
  if not loaded:
    raise UsageError("--tokenizers names no tokenizer")
  return loaded


def encode_batch(tokenizer: VQTokenizer, samples: list[dict], batch_size: int) -> np.ndarray:
  """Tokens [N, G, G] of the samples' raw modality, center-cropped to the tokenizer's size
  (`VQTokenizer.tokenize`), in batches padded to `batch_size`."""
  raw_name = tokenizer.raw_name
  for sample in samples:
    if raw_name not in sample:
      raise RecordError(f"has no {raw_name!r} for the {tokenizer.config.name} tokenizer",
                        field=raw_name)
  return tokenizer.tokenize([sample[raw_name] for sample in samples], batch_size=batch_size)


def tokenize_dataset(data: str, out: str, tokenizer_entries: Sequence[str], *,
                     batch_size: int = 64, progress: bool = True,
                     log: Callable[[str], None] = print):
  tokenizers = load_tokenizers(tokenizer_entries)

  def derive(samples):
    tokens = {name: encode_batch(tokenizer, samples, batch_size)
              for name, (_, tokenizer) in tokenizers.items()}
    return [{name: grids[i].astype(np.int32) for name, grids in tokens.items()}
            for i in range(len(samples))]

  job = {"method": "vqvae", "batch_size": batch_size,
         "tokenizers": {name: {"workdir": workdir, "config": tokenizer.config.to_dict()}
                        for name, (workdir, tokenizer) in tokenizers.items()}}
  return derived.write_derived(
      data, out, derive, job=job, name="vqvae_tokens", batch_size=batch_size,
      modalities=sorted({t.config.modality for _, t in tokenizers.values()}),
      progress=progress, log=log, metadata={"tokenizer": "VQ-VAE (tokenizers_vq)"})
