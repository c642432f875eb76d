"""The 4M model: reference parameter counts, attention structure, sharding, numerics."""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from fourm import modalities
from fourm.models import slots
from fourm.nn import positions, sharding
from fourm.models import fourm as fourm_model
from fourm.models.loss import fourm_loss
from fourm.nn.init import initialize
from tests.helpers import registered_modalities

Kind = modalities.Kind
LAYOUT = modalities.SMALL_LAYOUT
INPUT_BUDGET, TARGET_BUDGET = 40, 40
# Small enough to compile fast, large enough to have several heads and blocks.
SMALL = fourm_model.FourMConfig(dim=64, encoder_depth=2, decoder_depth=2, num_heads=4)

# Test-only modalities, so every kind the model knows is exercised.
TEST_GLOBAL = modalities.ModalitySpec(
    "test_global", Kind.GLOBAL, modalities.RawSpec("test_global_raw", modalities.Form.VECTOR,
                                                   "float32", "vector"),
    vocab_size=32, max_length=4)
TEST_FEATURES = modalities.ModalitySpec(
    "test_features", Kind.FEATURE_MAP,
    modalities.RawSpec("test_features_raw", modalities.Form.FEATURE_MAP, "float32",
                         modalities.Values.FEATURES, channels=12),
    roles=frozenset({modalities.Role.INPUT}))
NAMES = ("rgb", "tok_rgb", "tok_depth", "caption", "det", "test_global", "test_features")


@pytest.fixture(scope="module", autouse=True)
def test_modalities():
  with registered_modalities(TEST_GLOBAL, TEST_FEATURES):
    yield


# Batches that follow fourm/models/CONTRACT.md ---------------------------------------------


def _split(rng, budget: int, capacities: dict[str, int]) -> dict[str, int]:
  """A random split of `budget` tokens over modalities, none above its capacity."""
  counts = dict.fromkeys(capacities, 0)
  for _ in range(budget):
    open_ = [name for name, cap in capacities.items() if counts[name] < cap]
    counts[open_[rng.integers(len(open_))]] += 1
  return counts


def random_batch(names=NAMES, batch_size: int = 4, input_budget: int = INPUT_BUDGET,
                 target_budget: int = TARGET_BUDGET, seed: int = 0,
                 shortfall: tuple[int, ...] = ()) -> dict:
  """A batch with random disjoint masks using exactly the budgets (minus `shortfall[b]`
  tokens for sample b, to leave padding slots) and sequences as right-padded prefixes."""
  rng = np.random.default_rng(seed)
  specs = [modalities.get(name) for name in names]
  batch = {}
  for spec in specs:
    n = spec.num_tokens(LAYOUT)
    entry = {"input_mask": np.zeros((batch_size, n), bool),
             "target_mask": np.zeros((batch_size, n), bool)}
    if spec.kind == Kind.SEQUENCE:
      for key in ("input_tokens", "target_tokens", "target_labels"):
        entry[key] = np.zeros((batch_size, n), np.int32)  # PAD everywhere to start
    elif spec.kind == Kind.PIXELS:
      entry["tokens"] = rng.uniform(-1, 1, (batch_size, LAYOUT.resolution, LAYOUT.resolution,
                                            3)).astype(np.float32)
    elif spec.kind == Kind.FEATURE_MAP:
      entry["tokens"] = rng.normal(size=(batch_size, n, spec.source.channels)).astype(np.float32)
    else:
      entry["tokens"] = rng.integers(0, spec.vocab_size, (batch_size, n)).astype(np.int32)
    batch[spec.name] = entry

  for b in range(batch_size):
    short = shortfall[b] if b < len(shortfall) else 0
    inputs = _split(rng, input_budget - short,
                    {s.name: s.num_tokens(LAYOUT) if s.can_input else 0 for s in specs})
    # Dense targets come from the tokens left over by the inputs; sequences have their own.
    targets = _split(rng, target_budget - short, {
        s.name: 0 if not s.can_target else s.num_tokens(LAYOUT) if s.kind == Kind.SEQUENCE
        else s.num_tokens(LAYOUT) - inputs[s.name] for s in specs})
    for spec in specs:
      entry, n_in, n_tgt = batch[spec.name], inputs[spec.name], targets[spec.name]
      if spec.kind == Kind.SEQUENCE:
        entry["input_mask"][b, :n_in] = True
        entry["input_tokens"][b, :n_in] = rng.integers(4, spec.vocab_size, n_in)
        entry["target_mask"][b, :n_tgt] = True
        entry["target_tokens"][b, :n_tgt] = rng.integers(4, spec.vocab_size, n_tgt)
        entry["target_labels"][b, :n_tgt] = rng.integers(4, spec.vocab_size, n_tgt)
      else:
        order = rng.permutation(spec.num_tokens(LAYOUT))
        entry["input_mask"][b, order[:n_in]] = True
        entry["target_mask"][b, order[n_in:n_in + n_tgt]] = True
  return batch


def with_entry(batch: dict, name: str, key: str, value) -> dict:
  """A copy of `batch` with one array replaced."""
  copy = {m: dict(entry) for m, entry in batch.items()}
  copy[name][key] = value
  return copy


def make_model(config=SMALL, names=NAMES, seed: int = 0) -> fourm_model.FourM:
  return initialize(lambda rngs: fourm_model.FourM(config, names, LAYOUT, INPUT_BUDGET,
                                                   TARGET_BUDGET, rngs=rngs), seed)


@nnx.jit
def forward(model, batch):
  return model(batch)


@pytest.fixture(scope="module")
def model():
  return make_model()


def slot_positions(batch: dict, names=NAMES) -> np.ndarray:
  """Position (within its modality) of every decoder slot, recomputed from the masks."""
  masks, positions = [], []
  for name in names:
    spec = modalities.get(name)
    if spec.can_target:
      masks.append(batch[name]["target_mask"])
      positions.append(np.broadcast_to(np.arange(spec.num_tokens(LAYOUT)),
                                       batch[name]["target_mask"].shape))
  masks, positions = np.concatenate(masks, 1), np.concatenate(positions, 1)
  order = np.argsort(~masks, axis=1, kind="stable")[:, :TARGET_BUDGET]
  return np.take_along_axis(positions, order, axis=1)


# Parameter counts ---------------------------------------------------------------------------


def count_outside_embeddings(config: fourm_model.FourMConfig) -> int:
  abstract = nnx.eval_shape(lambda: fourm_model.FourM(
      config, modalities.MODALITY_SET_4M7, modalities.REFERENCE_LAYOUT, 128, 128,
      rngs=nnx.Rngs(0)))
  total = 0
  for path, variable in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
    if path[0] not in ("encoder_embeddings", "decoder_embeddings"):
      total += int(np.prod(variable.get_value().shape))
  return total


def test_parameter_counts_match_the_reference():
  base = count_outside_embeddings(fourm_model.fourm_base())
  tiny = count_outside_embeddings(fourm_model.fourm_tiny())
  print(f"\n4M-B parameters outside the embeddings: {base:,}")
  print(f"4M-T parameters outside the embeddings: {tiny:,}")
  assert base == 198_829_056
  assert tiny == 24_935_424


def test_presets_mirror_the_reference_sizes():
  sizes = {name: (c.dim, c.encoder_depth, c.decoder_depth, c.num_heads, c.mlp_ratio)
           for name, c in ((n, f()) for n, f in fourm_model.PRESETS.items())}
  assert sizes == {"tiny": (384, 6, 6, 6, 4.0), "base": (768, 12, 12, 12, 4.0),
                   "large": (1024, 24, 24, 16, 4.0), "xlarge": (2048, 24, 24, 32, 4.0)}
  assert fourm_model.fourm_tiny(dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_modality_embeddings_are_shared_between_encoder_and_decoder(model):
  # Reference default: one modality embedding per modality, on the encoder side.
  assert model.decoder_embeddings["tok_rgb"].mod_emb is None
  assert model.encoder_embeddings["tok_rgb"].mod_emb is not None
  unshared = nnx.eval_shape(lambda: make_model(
      fourm_model.FourMConfig(**{**SMALL.__dict__, "share_modality_embeddings": False})))
  assert unshared.decoder_embeddings["tok_rgb"].mod_emb is not None


# Forward ------------------------------------------------------------------------------------


def test_forward_slots_labels_and_heads(model):
  batch = random_batch(shortfall=(0, 5))
  out = forward(model, batch)
  assert out.hidden.shape == (4, TARGET_BUDGET, SMALL.dim)
  assert out.modality_index.dtype == jnp.int32 and out.labels.dtype == jnp.int32
  np.testing.assert_array_equal(out.valid.sum(1), [40, 35, 40, 40])
  np.testing.assert_array_equal(out.modality_index == -1, ~out.valid)

  # Slots come modality by modality, then by position; labels are the right tokens.
  positions = slot_positions(batch)
  for b in range(4):
    for slot in np.flatnonzero(out.valid[b]):
      name = NAMES[out.modality_index[b, slot]]
      key = "target_labels" if modalities.get(name).kind == Kind.SEQUENCE else "tokens"
      assert batch[name]["target_mask"][b, positions[b, slot]]
      assert out.labels[b, slot] == batch[name][key][b, positions[b, slot]]
    assert np.all(np.diff(out.modality_index[b][out.valid[b]]) >= 0)

  assert model.logits("caption", out.hidden).shape == (4, TARGET_BUDGET, 30_000)
  assert model.logits("test_global", out.hidden).shape == (4, TARGET_BUDGET, 32)
  assert not model.can_predict("rgb") and not model.can_predict("test_features")
  loss, metrics = nnx.jit(lambda m, o: fourm_loss(m, o))(model, out)
  assert np.isfinite(loss) and metrics["tokens/tok_rgb"] > 0


def test_patches_flatten_like_the_reference(model):
  image = np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  embedding = model.encoder_embeddings["rgb"]
  ours = embedding({"tokens": image})
  # The reference: rearrange 'b c (nh ph) (nw pw) -> b (nh nw) (ph pw c)', then a Linear.
  patches = einops.rearrange(image.transpose(0, 3, 1, 2),
                             "b c (nh ph) (nw pw) -> b (nh nw) (ph pw c)", ph=8, pw=8)
  np.testing.assert_allclose(ours, patches @ np.asarray(embedding.proj.kernel[...]),
                             rtol=1e-5, atol=1e-5)


def test_sincos_positions_match_the_reference_formula():
  dim, grid = 16, 5
  # The reference's build_2d_sincos_posemb, in numpy (meshgrid of w, h with 'ij').
  grid_w, grid_h = np.meshgrid(np.arange(grid, dtype=np.float32),
                               np.arange(grid, dtype=np.float32), indexing="ij")
  omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float32) / (dim // 4))
  out_w, out_h = np.outer(grid_w.reshape(-1), omega), np.outer(grid_h.reshape(-1), omega)
  expected = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], 1)
  np.testing.assert_allclose(positions.sincos_2d(grid, dim), expected, rtol=1e-6)
  omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float32) / (dim // 2))
  angles = np.outer(np.arange(7, dtype=np.float32), omega)
  np.testing.assert_allclose(positions.sincos_1d(7, dim),
                             np.concatenate([np.sin(angles), np.cos(angles)], 1), rtol=1e-6)


# Attention structure --------------------------------------------------------------------------


def test_a_modality_target_never_changes_another_modalitys_slots(model):
  batch = random_batch(seed=2)
  out = forward(model, batch)
  changed = forward(model, with_entry(batch, "caption", "target_tokens",
                                      (batch["caption"]["target_tokens"] * 7 + 11) % 30_000))
  caption = (out.modality_index == NAMES.index("caption")) & out.valid
  assert caption.any() and (~caption & out.valid).any()
  diff = np.abs(np.asarray(out.hidden - changed.hidden)).max(-1)
  assert np.all(diff[~caption] == 0), "another modality's slots saw the caption targets"
  assert np.all(diff[caption] > 1e-4), "the caption's own slots ignored its targets"


def test_sequence_targets_are_causal(model):
  batch = random_batch(seed=3)
  caption_index = NAMES.index("caption")
  positions = slot_positions(batch)
  out = forward(model, batch)
  sample = int(np.argmax(batch["caption"]["target_mask"].sum(1)))
  length = int(batch["caption"]["target_mask"][sample].sum())
  assert length >= 3
  k = length // 2
  tokens = batch["caption"]["target_tokens"].copy()
  tokens[sample, k] = (tokens[sample, k] + 1234) % 30_000
  changed = forward(model, with_entry(batch, "caption", "target_tokens", tokens))
  diff = np.abs(np.asarray(out.hidden - changed.hidden)).max(-1)[sample]
  caption = np.asarray(out.modality_index[sample] == caption_index)
  assert np.all(diff[caption & (positions[sample] < k)] == 0), "a slot saw a later token"
  assert np.all(diff[caption & (positions[sample] >= k)] > 1e-4), "later slots ignored it"
  assert np.all(diff[~caption] == 0)
  # Other samples are untouched too.
  others = np.abs(np.asarray(out.hidden - changed.hidden)).max((1, 2))
  assert np.all(np.delete(others, sample) == 0)


def test_tokens_outside_the_input_mask_do_not_leak(model):
  # Sample 1 leaves padding slots in the encoder: the gathered filler must not matter.
  batch = random_batch(seed=4, shortfall=(0, 6))
  out = forward(model, batch)
  rng = np.random.default_rng(5)
  perturbed = batch
  for name in NAMES:
    spec, entry = modalities.get(name), batch[name]
    hidden = ~entry["input_mask"]
    if spec.kind == Kind.SEQUENCE:
      noise = rng.integers(4, spec.vocab_size, hidden.shape)
      perturbed = with_entry(perturbed, name, "input_tokens",
                             np.where(hidden, noise, entry["input_tokens"]).astype(np.int32))
    elif spec.kind == Kind.PIXELS:
      patch_hidden = einops.repeat(hidden.reshape(-1, 8, 8), "b h w -> b (h p) (w q) c",
                                   p=8, q=8, c=3)
      perturbed = with_entry(perturbed, name, "tokens",
                             np.where(patch_hidden, -entry["tokens"], entry["tokens"]))
    elif spec.kind == Kind.FEATURE_MAP:
      perturbed = with_entry(perturbed, name, "tokens",
                             np.where(hidden[..., None], 5.0, entry["tokens"]))
    elif not spec.can_target:
      raise AssertionError(name)
    else:
      # Dense target tokens are labels only: they may change the labels, never the states.
      noise = rng.integers(0, spec.vocab_size, hidden.shape)
      perturbed = with_entry(perturbed, name, "tokens",
                             np.where(hidden, noise, entry["tokens"]).astype(np.int32))
  changed = forward(model, perturbed)
  np.testing.assert_array_equal(out.hidden, changed.hidden)
  # And the visible tokens do matter.
  flipped = with_entry(batch, "rgb", "tokens", -batch["rgb"]["tokens"])
  assert np.abs(np.asarray(forward(model, flipped).hidden - out.hidden)).max() > 1e-4


def test_slot_selection_pads_when_the_budget_exceeds_the_tokens():
  mask = jnp.array([[True, False, True], [False, False, False]])
  indices, valid = slots.select(mask, 5)
  np.testing.assert_array_equal(indices[0, :2], [0, 2])
  np.testing.assert_array_equal(valid, [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
  # No sample is left with a fully masked attention row.
  assert bool(slots.key_mask(valid).any(-1).all())


# Sharding ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sharded_forward_matches_single_device():
  assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
  batch = random_batch(seed=6, batch_size=4)
  single = forward(make_model(seed=7), batch)

  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
    model = make_model(seed=7)
    fc1 = model.encoder[0].mlp.fc1.kernel[...]
    assert fc1.sharding.spec == P("fsdp", "tensor")
    kv = model.decoder[1].cross_attn.kv.kernel[...]  # [embed, 2, heads, head_dim]
    # (A jitted initializer's outputs spell the spec without its trailing None.)
    assert kv.sharding.is_equivalent_to(
        jax.sharding.NamedSharding(mesh, P("fsdp", None, "tensor", None)), kv.ndim)
    assert kv.addressable_shards[0].data.shape[::2] == (kv.shape[0] // 2, kv.shape[2] // 2)
    assert model.decoder_embeddings["caption"].token_emb.embedding[...].sharding.spec == \
        P("tensor", "fsdp")
    # fc1 is [64, 170]: each device holds a quarter of it.
    assert fc1.addressable_shards[0].data.shape == (32, 85)
    sharded = forward(model, batch)
    assert sharded.hidden.sharding.spec[0] == ("data", "fsdp")
    specs = sharding.partition_specs(nnx.state(model, nnx.Param))
    assert specs["encoder"][0]["mlp"]["fc2"]["kernel"] == P("tensor", "fsdp")
  np.testing.assert_allclose(sharded.hidden, single.hidden, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(sharded.labels, single.labels)


def test_logical_rules_degrade_gracefully():
  mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = sharding.DEFAULT_RULES
  # "fsdp" is absent from this mesh, and 6 heads do not split over 4 devices.
  assert sharding.logical_to_mesh(("embed", "heads", "kv"), (64, 6, 16), mesh, rules) == \
      P(None, None, None)
  assert sharding.logical_to_mesh(("act_batch", "act_len", "act_mlp"), (8, 3, 12), mesh,
                                  rules) == P("data", None, "tensor")
  # Without a mesh, constraints are no-ops.
  x = jnp.ones((2, 3))
  assert sharding.constrain(x, ("act_batch", "act_embed")) is x


# Numerics options -------------------------------------------------------------------------------


def test_bfloat16_compute_is_close_to_float32(model):
  batch = random_batch(seed=8)
  reference = forward(model, batch)
  bf16 = make_model(fourm_model.FourMConfig(**{**SMALL.__dict__, "dtype": jnp.bfloat16}))
  assert bf16.encoder[0].mlp.fc1.kernel[...].dtype == jnp.float32  # params stay fp32
  out = forward(bf16, batch)
  assert out.hidden.dtype == jnp.bfloat16
  diff = np.abs(np.asarray(out.hidden, np.float32) - np.asarray(reference.hidden))
  valid = np.asarray(reference.valid)
  assert diff[valid].mean() < 0.03 and diff[valid].max() < 0.3, (diff.mean(), diff.max())


@pytest.mark.slow
def test_remat_gives_identical_outputs_and_gradients(model):
  batch = random_batch(seed=9)
  remat = make_model(fourm_model.FourMConfig(**{**SMALL.__dict__, "remat": True}))

  @nnx.jit
  def loss_and_grads(model, batch):
    return nnx.value_and_grad(lambda m: fourm_loss(m, m(batch))[0])(model)

  loss, grads = loss_and_grads(model, batch)
  remat_loss, remat_grads = loss_and_grads(remat, batch)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  for (path, g), (_, h) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(remat_grads),
                               strict=True):
    np.testing.assert_allclose(h[...], g[...], rtol=1e-5, atol=1e-7, err_msg=str(path))
  np.testing.assert_array_equal(forward(remat, batch).hidden, forward(model, batch).hidden)


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_4m21_kinds_train_from_masked_samples():
  """The 4M-21 layouts the registry adds: 14 px patch grids (tok_dinov2, 16x16 at
  224 px), global tokens with learned positions, t5_caption vectors. Masked samples
  run through the model and every new parameter gets a gradient."""
  from fourm.data.masking import AlphasMixture, MaskSample
  from fourm.data.pipeline import collate
  names = ("t5_caption", "tok_dinov2", "tok_dinov2_global", "caption")
  layout = modalities.REFERENCE_LAYOUT
  rng = np.random.default_rng(0)
  samples = [{"t5_caption": rng.normal(size=(20, 4096)).astype(np.float32),
              "tok_dinov2": rng.integers(0, 8192, (16, 16)).astype(np.int32),
              "tok_dinov2_global": rng.integers(0, 8192, 16).astype(np.int32),
              "caption": rng.integers(300, 3000, 12).astype(np.int32)} for _ in range(2)]
  transform = MaskSample(names, layout, 48, 48, AlphasMixture.uniform(names))
  batch = collate([transform(s, np.random.default_rng(i)) for i, s in enumerate(samples)],
                  max_boxes=0)
  assert batch["tok_dinov2"]["tokens"].shape == (2, 256)
  config = fourm_model.FourMConfig(dim=32, encoder_depth=1, decoder_depth=1, num_heads=4)
  model = fourm_model.FourM(config, names, layout, 48, 48, rngs=nnx.Rngs(0))
  # Global tokens learn their positions on both sides; the others have fixed ones.
  assert model.encoder_embeddings["tok_dinov2_global"].pos_emb[...].shape == (16, 32)
  assert model.decoder_embeddings["tok_dinov2_global"].pos_emb[...].shape == (16, 32)
  assert model.encoder_embeddings["tok_dinov2"].pos_emb is None
  assert "t5_caption" not in model.decoder_embeddings

  @nnx.jit
  def loss_and_grads(model, batch):
    return nnx.value_and_grad(lambda m: fourm_loss(m, m(batch))[0])(model)

  loss, grads = loss_and_grads(model, {k: {f: jnp.asarray(v) for f, v in e.items()}
                                       for k, e in batch.items()})
  assert np.isfinite(float(loss))
  for part in (grads.encoder_embeddings["tok_dinov2_global"].pos_emb,
               grads.decoder_embeddings["tok_dinov2_global"].pos_emb,
               grads.encoder_embeddings["t5_caption"].proj.kernel,
               grads.encoder_embeddings["t5_caption"].proj.bias):
    assert np.abs(np.asarray(part[...])).sum() > 0
