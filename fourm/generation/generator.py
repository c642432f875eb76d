"""Generation from a trained checkpoint, end to end: what `fourm generate` and the
notebook use.

    generator = Generator.from_checkpoint("demo_out/train")
    result = generator.generate({"caption": "a red cube left of a blue sphere"},
                                default_chain(["tok_rgb", "tok_depth"]), num_samples=4)
    result.save("out/")            # grid.png, tokens.npz, text.json

Conditions are tokenized (`conditions.py`), the chain runs (`chain.py`), and every
modality is decoded back to what a person looks at (`tokenizers_vq/detokenize.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from fourm import modalities
from fourm.checkpoint import Checkpoints
from fourm.data import visualize
from fourm.errors import UsageError
from fourm.generation import loading
from fourm.generation.chain import run_chain
from fourm.generation.conditions import ConditionEncoder, mask_region, read_value
from fourm.generation.sampler import Decoding, Sampler
from fourm.nn import sharding
from tokenizers_vq.detokenize import Detokenizer

Kind = modalities.Kind


def converted_from(workdir: str) -> dict[str, Any] | None:
  """What the workdir's checkpoint was converted from, as `fourm convert --from reference`
  records it in the checkpoint's metadata (source, kind, file, dtypes, reference_config);
  None for a workdir `fourm train` wrote, or one without a readable checkpoint. Reads the
  metadata alone, not the model."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  checkpoints = Checkpoints(workdir, every=1, keep=1_000_000, async_save=False,
                            owner=False)
  try:
    meta = checkpoints.latest_meta()
  finally:
    checkpoints.close()
  found = (meta or {}).get("converted_from")
  return dict(found) if found else None


class Generator:
  """A trained model with its tokenizers: conditions in, decoded modalities out."""

  def __init__(self, model, tokenizers: Mapping[str, Any], *, text_vocab: str | None = None,
               pixel_normalization: str = "imagenet", reference_faithful: bool = False,
               mesh: jax.sharding.Mesh | None = None, rules: Any = None):
    self.model = model
    # The mesh the parameters are sharded over, and the logical-axis table that placed
    # them: generation runs under both, as a train step does, so the model's activation
    # constraints split the batch instead of leaving XLA to guess from the weights.
    self.mesh = mesh
    self.rules = sharding.DEFAULT_RULES if rules is None else rules
    # A converted reference model: default chains use the reference's schedules,
    # sequences from nothing are prompted with [S_1] and text conditions have no [EOS],
    # as the reference's generation prompts them.
    self.reference_faithful = reference_faithful
    self.sampler = Sampler(model, vocab_limits={
        name: tokenizer.num_codes for name, tokenizer in tokenizers.items()},
        sentinel_prompt=reference_faithful)
    self.layout = model.layout
    tokenizers = dict(tokenizers)
    # A retrieved document's or an edit source's grids (de)tokenize as their base's.
    for name in model.modality_names:
      base = modalities.input_variant_base(name)
      if base is not None and base in tokenizers:
        tokenizers.setdefault(name, tokenizers[base])
    self.tokenizers = tokenizers
    # Set by `from_checkpoint`: the run's config and workdir (retrieval reads its data).
    self.run_config, self.workdir = None, None
    self.text_vocab = text_vocab
    self.pixel_normalization = pixel_normalization
    self.encoder = ConditionEncoder(model.modality_names, model.input_names, model.layout,
                                    tokenizers, text_vocab, pixel_normalization,
                                    condition_eos=not reference_faithful,
                                    vocab_sizes=dict(model.config.vocab_sizes))
    self.detokenizer = Detokenizer(self.tokenizers, text_vocab)

  @classmethod
  def from_checkpoint(cls, workdir: str, tokenizers: Sequence[str] = (),
                      mesh: jax.sharding.Mesh | None = None) -> "Generator":
    """The newest checkpoint of a `fourm train` workdir, with the tokenizers its token
    datasets record (`tokenizers` entries "tok_x=WORKDIR" override them). With `mesh`
    the parameters are read straight into their shards (`loading.load_model`)."""
    trained = loading.load_model(workdir, mesh=mesh)
    config = trained.config
    generator = cls(trained.model, loading.load_tokenizers(config, workdir, tokenizers),
                    text_vocab=loading.text_vocab_path(config),
                    pixel_normalization=config.get("pixel_normalization", "imagenet"),
                    reference_faithful=bool(config.get("reference_faithful", False)),
                    mesh=mesh, rules=loading.axis_rules(config))
    generator.run_config, generator.workdir = config, workdir
    return generator

  # Generation ------------------------------------------------------------------------------

  def retrieve(self, conditions: Mapping[str, Any], num_samples: int, k: int,
               index: str | None = None) -> tuple[dict[str, list[Any]], list[list[str]]]:
    """Retrieval-augmented generation (fourm/retrieval/): the documents the index
    retrieves for each sample's caption and / or rgb condition, as conditions
    ({"ret<j>_<name>": one value per sample}, j <= k), and each sample's document keys.
    `index`: default the run's config.retrieval.index; the documents' values are read
    from the run's datasets. Merge them into the conditions of `generate`."""
    from fourm.retrieval import conditions as retrieval
    from fourm.retrieval.index import read_manifest
    names = [n for n in self.model.input_names if modalities.retrieved_base(n) is not None]
    documents = retrieval.retrieved_names(names)
    if not documents:
      raise UsageError("this model reads no retrieved documents (no ret<k>_<name> input): "
                       "train it with config.retrieval")
    if not 1 <= k <= len(documents):
      raise UsageError(f"--retrieve {k}: this model reads 1 to {len(documents)} documents")
    if self.run_config is None:
      raise UsageError("retrieval reads the run's datasets: load the model with "
                       "Generator.from_checkpoint")
    settings = self.run_config.get("retrieval", {})
    index = index or settings.get("index", "")
    if not index:
      raise UsageError("no index: the run has no config.retrieval.index; give --index DIR")
    reader = retrieval.DocumentReader(retrieval.RetrievalConfig(
        index=index, data=loading.run_datasets(self.run_config, self.workdir),
        split=read_manifest(index).split,
        duplicate_threshold=settings.get("duplicate_threshold", 0.95),
        diversity_threshold=settings.get("diversity_threshold", 0.95),
        required_parts=retrieval.parts_for(names)))
    queries = []
    for number in range(num_samples):
      query = {}
      for name in ("caption", "rgb"):
        if name in conditions:
          value = conditions[name]
          value = value[number] if isinstance(value, (list, tuple)) else value
          query[name] = read_value(name, value)
      if not query:
        raise UsageError("retrieval queries the index with the caption or rgb condition: "
                         "give one of them")
      queries.append(query)
    wanted = [n for n in names if modalities.retrieved_base(n)[0] <= k]
    return retrieval.documents_for_queries(reader, queries, wanted)

  def encode_conditions(self, conditions: Mapping[str, Any], num_samples: int
                        ) -> dict[str, dict]:
    """{model modality: entry}; a single value is repeated for every sample, a list gives
    one value per sample. A model that reads an edit's source ("src_tok_rgb") reads the
    given image there too unless the source is given itself: the image is the scene to
    edit."""
    known = {}
    for name, value in {**self._edit_sources(conditions), **conditions}.items():
      values = list(value) if isinstance(value, (list, tuple)) else [value] * num_samples
      if len(values) != num_samples:
        raise UsageError(f"condition {name}: {len(values)} values for {num_samples} samples")
      modality, entry = self.encoder.encode(name, values)
      if modality in known:
        raise UsageError(f"two conditions feed {modality!r}")
      known[modality] = entry
    return known

  def _edit_sources(self, conditions: Mapping[str, Any]) -> dict[str, Any]:
    """{"src_<grid>": the condition of the grid's raw modality} for each edit-source input
    of the model that is not given but whose raw modality is (rgb -> src_tok_rgb)."""
    sources = {}
    for name in self.model.input_names:
      base = modalities.edit_source_base(name)
      raw = modalities.get(base).source.name if base is not None else None
      if raw in conditions and name not in conditions:
        sources[name] = conditions[raw]
    return sources

  def generate(self, conditions: Mapping[str, Any], chain: Sequence[Decoding], *,
               seed: int = 0, num_samples: int = 1,
               negatives: Mapping[str, Any] | None = None,
               regions: Mapping[str, Sequence[float]] | None = None,
               outpaint: bool = False,
               progress: Callable[[int, Decoding], None] | None = None) -> "Generation":
    """Runs `chain` from the conditions. `negatives` are negative prompts (used by steps
    with guidance); `regions` {grid modality: box} hides that box of a given grid so a
    step generating that modality in-paints it (with `outpaint`, hides all but the box,
    which the step then extends)."""
    known = self.encode_conditions(conditions, num_samples)
    for name, box in (regions or {}).items():
      modality = self.encoder.modality_for(name)
      if modality not in known or modalities.get(modality).kind != Kind.IMAGE_TOKENS:
        raise UsageError(f"region for {name}: give {modality} as a condition first; "
                         "regions apply to token grids")
      grid = modalities.get(modality).grid(self.layout)
      known[modality] = mask_region(known[modality], box, grid, outside=outpaint)
    negative_entries = self.encode_conditions(negatives or {}, num_samples)
    given = tuple(known)
    with self._on_mesh():
      known = run_chain(self.sampler, known, chain, jax.random.key(seed), negative_entries,
                        progress)
    return Generation(self, known, given, tuple(d.target for d in chain))

  def _on_mesh(self) -> contextlib.AbstractContextManager:
    if self.mesh is None:
      return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nnx.logical_axis_rules(self.rules))
    return stack


@dataclasses.dataclass
class Generation:
  """The known entries after a chain: the conditions and every generated target."""
  generator: Generator
  entries: dict[str, dict]
  conditions: tuple[str, ...]
  generated: tuple[str, ...]

  @property
  def num_samples(self) -> int:
    first = next(iter(self.entries.values()))
    return len(first["input_mask"])

  def tokens(self, name: str) -> np.ndarray:
    entry = self.entries[name]
    return np.asarray(entry["tokens"] if "tokens" in entry else entry["input_tokens"])

  def decode(self, name: str, index: int) -> Any:
    """Sample `index`'s modality `name` as a raw value: an image array, a str, boxes, a
    global feature vector (token ids where no tokenizer decodes them)."""
    spec = modalities.get(name)
    if spec.kind == Kind.PIXELS:
      mean, std = (np.asarray(v, np.float32) for v in modalities.PIXEL_STATS[
          self.generator.pixel_normalization])
      pixels = (self.tokens(name)[index] * std + mean) * 255.0
      return np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    if spec.kind == Kind.SEQUENCE:
      entry = self.entries[name]
      ids = np.asarray(entry["input_tokens"][index])[np.asarray(entry["input_mask"][index])]
      return self.generator.detokenizer.decode(name, ids)
    if spec.kind == Kind.IMAGE_TOKENS or (spec.kind == Kind.GLOBAL
                                          and name in self.generator.tokenizers):
      # A global modality decodes to its feature vector (an MLP tokenizer's decoder).
      return self.generator.detokenizer.decode(name, self.tokens(name)[index])
    return self.tokens(name)[index]

  def samples(self) -> list[dict[str, Any]]:
    """One dict per sample of raw modalities (`fourm show`'s format) for the grid.
    A condition whose raw modality was also generated shows as "<raw> (given)"."""
    generated_raw = {modalities.get(n).source.name for n in self.generated}
    rows = []
    for index in range(self.num_samples):
      sample: dict[str, Any] = {"__name__": f"sample {index}"}
      texts = []
      for name in self.entries:
        spec = modalities.get(name)
        if (spec.kind in (Kind.IMAGE_TOKENS, Kind.GLOBAL)
            and name not in self.generator.tokenizers):
          continue  # no decoder for it: its tokens are in tokens.npz
        value = self.decode(name, index)
        raw = spec.source.name
        if spec.source.values == modalities.Values.TEXT:  # written under the row
          texts.append(("generated" if name in self.generated else "given") +
                       f" {name}: {value}")
          continue
        document = modalities.retrieved_base(name)
        if document is not None:
          raw = f"{raw} (retrieved {document[0]})"
        elif modalities.edit_source_base(name) is not None:
          raw = f"{raw} (source tokens)"
        elif name in self.conditions and raw in generated_raw and name not in self.generated:
          raw = f"{raw} (given)"
        sample[raw] = value
      sample["__text__"] = " | ".join(texts) if texts else None
      rows.append(sample)
    return rows

  def save(self, out: str, tile: int = 128) -> dict[str, str]:
    """Writes grid.png, tokens.npz (every modality's tokens) and text.json (captions
    and boxes of every sample) into `out`; returns their paths."""
    os.makedirs(out, exist_ok=True)
    title = (f"given: {', '.join(self.conditions) or 'nothing'}  ->  generated: "
             f"{', '.join(self.generated)}")
    paths = {"grid": visualize.save_grid(self.samples(), os.path.join(out, "grid.png"),
                                         tile=tile, title=title)}
    paths["tokens"] = os.path.join(out, "tokens.npz")
    np.savez(paths["tokens"], **{name: self.tokens(name) for name in self.entries})
    texts = {}
    for name in self.entries:
      if modalities.get(name).kind == Kind.SEQUENCE:
        texts[name] = [_jsonable(self.decode(name, i)) for i in range(self.num_samples)]
    paths["text"] = os.path.join(out, "text.json")
    with open(paths["text"], "w") as f:
      json.dump({"conditions": list(self.conditions), "generated": list(self.generated),
                 **texts}, f, indent=2)
    return paths


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {key: _jsonable(item) for key, item in value.items()}
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, (list, tuple)):
    return [_jsonable(item) for item in value]
  return value
