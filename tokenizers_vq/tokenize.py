"""`fourm tokenize --data DIR --tokenizers WORKDIR... --out DIR`: token records of a dataset.

Each trained VQ-VAE (a `fourm tokenizer train` workdir) turns its raw modality into the
registry's token-grid modality made from it (rgb -> tok_rgb), int32 grids. Images are
center-cropped and resized to the tokenizer's resolution first, as the data pipeline does
for evaluation, so the tokens describe the same pixels the 4M pipeline reads beside them
(with augment off).

An MLP VQ-VAE (4M-21's global-feature tokenizers, converted by `fourm convert --from
reference`: its checkpoint's metadata holds "mlp_tokenizer") turns one raw feature vector
per record into a global-token modality (dinov2_global [768] -> tok_dinov2_global, int32
[16]); `tokenizers_vq.global_tokens`. Its workdir names the raw modality when the
converter knew it (a published hub id, or --modality); otherwise the entry must:
tok_dinov2_global=WORKDIR.

Records are written side by side with the source
(`fourm/data/derived.py`): same shards, same order, resumable shard by shard; a second run
skips finished shards. A record that lacks a tokenizer's raw field (an instruction
dataset's question records have no semseg, its edited/ store holds an image for edit
records only) gets a token record without those tokens; the job logs how many records
did, and a dataset in which no record has the field is an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from fourm import modalities
from fourm.data import derived
from fourm.errors import RecordError, UsageError
from tokenizers_vq import global_tokens
from tokenizers_vq.global_tokens import GlobalTokenizer
from tokenizers_vq.mlp_vq import MLPVQConfig
from tokenizers_vq.train import load_tokenizer
from tokenizers_vq.train_step import VQTokenizer

Tokenizer = VQTokenizer | GlobalTokenizer


def _parse(entry: str) -> tuple[str | None, str]:
  """'WORKDIR' or 'tok_rgb=WORKDIR' (the name is then checked against the checkpoint)."""
  name, sep, path = entry.partition("=")
  return (name, path) if sep else (None, entry)


def _is_variant_of(name: str, base: str) -> bool:
  """tok_rgb@448 and src_tok_rgb (an edit's source scene) are made by tok_rgb's tokenizer."""
  return modalities.is_known(name) and (modalities.get(name).base_name == base
                                        or modalities.edit_source_base(name) == base)


def _load_global(entry: str, expected: str | None, workdir: str, meta: dict
                 ) -> tuple[str, GlobalTokenizer]:
  """(global-token modality, tokenizer) of an MLP tokenizer workdir, checked against the
  registry: the modality is the entry's name, or the one made from the raw modality the
  workdir records."""
  try:
    config = MLPVQConfig.from_dict(meta["mlp_tokenizer"])
  except UsageError as error:
    raise UsageError(f"{workdir}: {error}") from None
  recorded = meta.get("modality")
  choices = ", ".join(f"{name}={workdir}" for name in global_tokens.global_modalities())
  if expected is None:
    if recorded is None:
      raise UsageError(f"{workdir}: an MLP tokenizer ({config.in_channels}-channel vectors "
                       f"into {config.num_codebooks} ids of {config.codebook_size}) that "
                       "does not say which modality it makes; name it: --tokenizers "
                       f"{choices}")
    try:
      name = global_tokens.global_modality_of(recorded)
    except KeyError:
      raise UsageError(f"{workdir}: an MLP tokenizer for {recorded!r}, which no "
                       "global-token modality of the registry is made from") from None
  else:
    name = expected
    if not modalities.is_known(name):
      raise UsageError(f"--tokenizers {entry}: no modality {name!r} in the registry (an MLP "
                       f"tokenizer makes global tokens: {choices})")
    made_from = modalities.get(name).source.name
    if recorded is not None and recorded != made_from:
      raise UsageError(f"--tokenizers {entry}: that checkpoint is a tokenizer for "
                       f"{recorded!r}, not for {made_from!r} ({name} is made from it)")
  global_tokens.check(name, config, workdir)
  raw = modalities.get(name).source.name
  return name, GlobalTokenizer(name, global_tokens.load_mlp_tokenizer(workdir, name=raw))


def _load_grid(entry: str, expected: str | None, workdir: str) -> tuple[str, VQTokenizer]:
  tokenizer = load_tokenizer(workdir)
  try:
    name = modalities.grid_modality_of(tokenizer.raw_name)
  except KeyError:
    raise UsageError(f"{workdir}: a tokenizer for {tokenizer.raw_name!r}, which no "
                     "token-grid modality of the registry is made from") from None
  if expected is not None and expected != name and _is_variant_of(expected, name):
    name = expected  # tok_rgb@448=DIR, src_tok_rgb=DIR: a variant the grid's tokenizer makes
  if expected is not None and expected != name:
    raise UsageError(f"--tokenizers {entry}: that checkpoint is a tokenizer for "
                     f"{tokenizer.config.modality!r} (it makes {name}), not {expected}")
  vocab = modalities.get(name).vocab_size
  if tokenizer.config.vocab_size > vocab:
    raise UsageError(f"{workdir}: its vocabulary of {tokenizer.config.vocab_size} does not "
                     f"fit {name}'s {vocab} in the modality registry")
  return name, tokenizer


def load_tokenizers(entries: Sequence[str]) -> dict[str, tuple[str, Tokenizer]]:
  """{tok_<modality>: (workdir, tokenizer)}, checked against the modality registry: a
  `VQTokenizer` for a token grid, a `GlobalTokenizer` for global tokens (a workdir whose
  checkpoint holds an MLP tokenizer)."""
  loaded: dict[str, tuple[str, Tokenizer]] = {}
  for entry in entries:
    expected, workdir = _parse(entry)
    meta = global_tokens.checkpoint_meta(workdir)
    if meta is not None and "mlp_tokenizer" in meta:
      name, tokenizer = _load_global(entry, expected, workdir, meta)
    else:
      name, tokenizer = _load_grid(entry, expected, workdir)
    if name in loaded:
      raise UsageError(f"two tokenizers make {name}: {loaded[name][0]} and {workdir}")
    loaded[name] = (os.path.abspath(workdir), tokenizer)
  if not loaded:
    raise UsageError("--tokenizers names no tokenizer")
  return loaded


def encode_batch(tokenizer: Tokenizer, samples: list[dict], batch_size: int) -> np.ndarray:
  """Tokens of the samples' raw modality, in batches padded to `batch_size`: grids
  [N, G, G], center-cropped to the tokenizer's size (`VQTokenizer.tokenize`), or global
  ids [N, K] of one vector each (`GlobalTokenizer.tokenize`)."""
  raw_name = tokenizer.raw_name
  label = tokenizer.name if isinstance(tokenizer, GlobalTokenizer) else tokenizer.config.name
  for sample in samples:
    if raw_name not in sample:
      raise RecordError(f"has no {raw_name!r} for the {label} tokenizer", field=raw_name)
  return tokenizer.tokenize([sample[raw_name] for sample in samples], batch_size=batch_size)


def _job_entry(workdir: str, tokenizer: Tokenizer) -> dict:
  if isinstance(tokenizer, GlobalTokenizer):
    return {"workdir": workdir, "kind": "mlp", "raw": tokenizer.raw_name,
            "config": tokenizer.config.to_dict()}
  return {"workdir": workdir, "config": tokenizer.config.to_dict()}


def tokenize_dataset(data: str, out: str, tokenizer_entries: Sequence[str], *,
                     batch_size: int = 64, progress: bool = True,
                     log: Callable[[str], None] = print):
  tokenizers = load_tokenizers(tokenizer_entries)

  def derive(samples):
    tokens = [{} for _ in samples]
    for name, (_, tokenizer) in tokenizers.items():
      # Only the samples that hold the raw field are encoded; the others get no tokens
      # of it (absent, never zero-filled). Each sample's tokens do not depend on the
      # others in its batch, so the ids are those of encoding the whole batch.
      having = [i for i, sample in enumerate(samples) if tokenizer.raw_name in sample]
      if not having:
        continue
      grids = encode_batch(tokenizer, [samples[i] for i in having], batch_size)
      for i, grid in zip(having, grids, strict=True):
        tokens[i][name] = grid.astype(np.int32)
    return tokens

  job = {"method": "vqvae", "batch_size": batch_size,
         "tokenizers": {name: _job_entry(workdir, tokenizer)
                        for name, (workdir, tokenizer) in tokenizers.items()}}
  return derived.write_derived(
      data, out, derive, job=job, name="vqvae_tokens", batch_size=batch_size,
      modalities=sorted({t.raw_name for _, t in tokenizers.values()}),
      optional={name: t.raw_name for name, (_, t) in tokenizers.items()},
      progress=progress, log=log, metadata={"tokenizer": "VQ-VAE (tokenizers_vq)"})
