"""Two modalities fourm has never seen, added the way a contributor would: registry
entries, plus for the genuinely new family (a color palette as a sequence) its codec and
its drawer. Nothing else changes, and they run record -> masking -> model -> loss ->
generation -> detokenize -> picture.

* tok_edges: image tokens of a new raw image modality, `edges` (object boundaries, class
  ids 0 / 1). Its meaning (`Values.CLASSES`) gives it a ground-truth patch quantizer, a
  VQ-VAE preset and a drawer for free.
* palette: a sequence modality of a new raw vector modality, the scene's object colors
  uint8 [N, 3], serialized by its own codec as color words of the text vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

from fourm import modalities
from fourm.data import patch_tokens, synthetic, tiles
from fourm.data.masking import AlphasMixture, MaskSample
from fourm.data.pipeline import Pipeline, PipelineConfig
from fourm.generation.chain import default_chain
from fourm.generation.generator import Generator
from fourm.models import fourm as fourm_model
from fourm.models.loss import fourm_loss
from tests.helpers import write_dataset
from tokenizers_vq import sequences, vqvae

LAYOUT = modalities.SMALL_LAYOUT
Values = modalities.Values

EDGES = modalities.RawSpec("edges", modalities.Form.IMAGE, "uint8", Values.CLASSES,
                           resample=modalities.Resample.NEAREST)
TOK_EDGES = modalities.ModalitySpec("tok_edges", modalities.Kind.IMAGE_TOKENS, EDGES,
                                    vocab_size=256)
PALETTE_RAW = modalities.RawSpec("palette", modalities.Form.VECTOR, "uint8", "palette",
                                 channels=3)
PALETTE = modalities.ModalitySpec("palette", modalities.Kind.SEQUENCE, PALETTE_RAW,
                                  vocab_size=modalities.TEXT_VOCAB, tokenizer="palette",
                                  max_length=16)
NAMES = ("rgb", "tok_rgb", "tok_edges", "palette")


class PaletteCodec:
  """Colors uint8 [N, 3] <-> one color word each: 4 levels per channel, ids from 5000 (plain
  words of the reference vocabulary, clear of its special ids)."""
  BASE, LEVELS = 5000, 4

  def __init__(self, text_vocab: str | None = None):
    self.text_vocab = text_vocab

  def __call__(self, colors) -> np.ndarray:
    levels = np.asarray(colors, np.int64).reshape(-1, 3) * self.LEVELS // 256
    return (self.BASE + (levels[:, 0] * self.LEVELS + levels[:, 1]) * self.LEVELS
            + levels[:, 2]).astype(np.int32)

  def detokenize(self, ids) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    words = ids[(ids >= self.BASE) & (ids < self.BASE + self.LEVELS ** 3)] - self.BASE
    levels = np.stack([words // self.LEVELS ** 2, words // self.LEVELS % self.LEVELS,
                       words % self.LEVELS], -1)
    return ((levels + 0.5) * 256 / self.LEVELS).astype(np.uint8)


def draw_palette(colors, context: tiles.TileContext) -> np.ndarray:
  """One vertical stripe per color; a blank tile for none."""
  colors = np.asarray(colors, np.uint8).reshape(-1, 3)
  if not len(colors):
    return tiles.blank_tile(context.tile, "no colors")
  stripes = np.repeat(colors[None], context.tile, axis=0)  # [tile, N, 3]
  return np.asarray(Image.fromarray(stripes).resize((context.tile, context.tile),
                                                    Image.Resampling.NEAREST))


@pytest.fixture(scope="module")
def registered():
  modalities.register(TOK_EDGES)
  modalities.register(PALETTE)
  sequences.register_codec("palette", PaletteCodec)
  tiles.register_drawer("palette", draw_palette)
  yield
  for spec in (TOK_EDGES, PALETTE):
    modalities.unregister(spec.name)
    modalities.RAW_MODALITIES.pop(spec.source.name)
  sequences.CODECS.pop("palette")
  tiles.DRAWERS.pop("palette")


def with_new_modalities(sample: dict) -> dict:
  """A synthetic scene plus its object boundaries and the colors of its objects."""
  semseg = sample["semseg"]
  edges = np.zeros(semseg.shape, np.uint8)
  edges[:-1] |= semseg[:-1] != semseg[1:]
  edges[:, :-1] |= semseg[:, :-1] != semseg[:, 1:]
  objects = sample["instance"]
  palette = np.array([sample["rgb"][objects == k].mean(0) for k in np.unique(objects) if k],
                     np.uint8).reshape(-1, 3)
  return {"rgb": sample["rgb"], "semseg": semseg, "edges": edges, "palette": palette}


@pytest.fixture(scope="module")
def data(registered, tmp_path_factory):
  root = tmp_path_factory.mktemp("new_modalities")
  scenes = [with_new_modalities(synthetic.make_sample(0, "train", i)) for i in range(16)]
  write_dataset(str(root / "world"), {"train": scenes})
  assert "tok_edges" in patch_tokens.quantizable()  # the patch quantizer of class maps
  info = patch_tokens.write_patch_tokens(str(root / "world"), str(root / "tokens"), LAYOUT,
                                         ("tok_rgb", "tok_edges"), progress=False,
                                         log=lambda _: None)
  return [str(root / "world"), str(root / "tokens")], scenes, info


def batch_of(data_paths) -> dict:
  masker = MaskSample(NAMES, LAYOUT, 64, 64, AlphasMixture.uniform(NAMES),
                      sequence_encoders=sequences.codecs_for(NAMES))
  config = PipelineConfig(data=tuple(data_paths), batch_size=8, resolution=64, seed=0,
                          augment=False, modalities=("rgb", "palette", "tok_rgb", "tok_edges"))
  batch = next(Pipeline(config, transform=masker).iterator())
  batch.pop("meta")
  return jax.tree.map(jnp.asarray, batch)


def test_the_registry_gives_the_image_modality_its_tokenizers(data):
  _, scenes, info = data
  assert "tok_edges" in info.modalities
  quantizer = patch_tokens.quantizer_for("tok_edges")
  ids = quantizer.tokenize([scenes[0]["edges"]], LAYOUT)
  assert ids.shape == (1, 8, 8) and set(np.unique(ids)) <= {0, 1}
  config = vqvae.preset("edges_tiny", num_classes=2)  # a VQ-VAE would be trained from this
  assert config.is_class_map and config.vocab_size == 256 // vqvae.TINY_VOCAB_DIVISOR


@pytest.fixture(scope="module")
def trained(data):
  """A tiny model after 40 steps on one batch of the new modalities: (model, first
  metrics, last metrics)."""
  batch = batch_of(data[0])
  config = fourm_model.FourMConfig(dim=64, encoder_depth=2, decoder_depth=2, num_heads=4)
  model = fourm_model.FourM(config, NAMES, LAYOUT, 64, 64, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, batch):
    (_, metrics), grads = nnx.value_and_grad(
        lambda m: fourm_loss(m, m(batch)), has_aux=True)(model)
    optimizer.update(model, grads)
    return metrics

  first = step(model, optimizer, batch)
  for _ in range(40):
    last = step(model, optimizer, batch)
  return model, first, last


@pytest.mark.slow
def test_records_mask_and_train_for_both(data, trained):
  _, scenes, _ = data
  codec = PaletteCodec()
  np.testing.assert_array_equal(codec.detokenize(codec(scenes[0]["palette"])) // 64,
                                scenes[0]["palette"] // 64)
  _, first, last = trained
  for name in ("tok_edges", "palette"):
    assert int(first[f"tokens/{name}"]) > 0, name
    assert float(last[f"loss/{name}"]) < 0.5 * float(first[f"loss/{name}"]), (name, last)


@pytest.mark.slow
def test_generation_decodes_and_draws_both(data, trained, tmp_path):
  _, scenes, _ = data
  model, _, _ = trained
  generator = Generator(model, {name: patch_tokens.quantizer_for(name)
                                for name in ("tok_rgb", "tok_edges")})
  result = generator.generate({"rgb": [s["rgb"] for s in scenes[:2]]},
                              default_chain(["tok_edges", "palette"]), num_samples=2)
  edges = result.decode("tok_edges", 0)
  assert edges.shape == (8, 8) and edges.max() < 256
  colors = result.decode("palette", 0)
  # The model has learned to write color words: they decode, and the registered drawer
  # shows each as a stripe.
  assert colors.dtype == np.uint8 and colors.ndim == 2 and colors.shape[1] == 3
  assert len(colors) > 0
  row = dict(tiles.sample_tiles(result.samples()[0], 32))
  assert {"rgb", "edges", "palette"} <= set(row)
  assert {tuple(c) for c in row["palette"].reshape(-1, 3)} == {tuple(c) for c in colors}
  paths = result.save(str(tmp_path / "out"))
  with Image.open(paths["grid"]) as grid:
    assert grid.width > 3 * 128  # a column each for rgb, edges and palette
