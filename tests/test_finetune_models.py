"""The fine-tuning model: the 4M encoder reused as it is, the task heads, LoRA / VPT with
the frozen encoder never updated, layer-wise learning-rate decay, and the dense losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm import modalities
from fourm.errors import UsageError
from fourm.finetune import dense_heads, peft, step as step_lib
from fourm.finetune.encoder import RGBEncoder, evenly_spaced_layers
from fourm.finetune.task_model import HeadOptions, TuningOptions, build_task_model
from fourm.models.config import FourMConfig
from fourm.models.fourm import FourM
from fourm.nn.positions import sincos_2d
from fourm.nn.init import initialize

DIM, DEPTH = 32, 4
CONFIG = FourMConfig(dim=DIM, encoder_depth=DEPTH, decoder_depth=1, num_heads=2)
LAYOUT = modalities.SMALL_LAYOUT


def fourm(seed: int = 0, names=("rgb", "tok_semseg")) -> FourM:
  return initialize(lambda rngs: FourM(CONFIG, names, LAYOUT, 64, 64, rngs=rngs), seed)


def images(batch: int = 2, resolution: int = 64, seed: int = 0) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (batch, resolution, resolution, 3))


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_the_encoder_is_the_fourm_encoder_unchanged():
  model = fourm()
  pixels = images()
  batch = {"rgb": {"tokens": pixels, "input_mask": jnp.ones((2, 64), bool)}}
  context, valid = model.encode(batch, input_budget=64)
  encoder = RGBEncoder(model, rngs=nnx.Rngs(0))
  encoder.deterministic = True
  tokens = encoder(pixels).tokens.reshape(2, 64, DIM)
  # The FourM's context is the same normed encoder output, projected, plus positions.
  expected = model.decoder_proj_context(tokens) + encoder.positions()
  assert bool(valid.all())
  np.testing.assert_allclose(expected, context, rtol=1e-5, atol=1e-5)
  assert encoder.blocks is model.encoder  # the modules themselves, not copies


def test_another_resolution_recomputes_the_positions():
  encoder = RGBEncoder(fourm(), resolution=96, rngs=nnx.Rngs(0))
  out = encoder(images(1, 96))
  assert out.tokens.shape == (1, 12, 12, DIM) and out.resolution == 96
  mod_emb = encoder.patch_embedding.mod_emb[...]
  np.testing.assert_allclose(encoder.positions(), sincos_2d(12, DIM) + mod_emb, atol=1e-6)
  with pytest.raises(UsageError, match="not a multiple of the model's patch size 8"):
    RGBEncoder(fourm(), resolution=100, rngs=nnx.Rngs(0))
  with pytest.raises(UsageError, match=r"expected pixels \[B, 96, 96, 3\]"):
    encoder(images(1, 64))


def test_a_model_without_rgb_pixels_is_refused():
  with pytest.raises(UsageError, match="no rgb pixel input"):
    RGBEncoder(fourm(names=("tok_rgb", "tok_semseg")), rngs=nnx.Rngs(0))


def test_evenly_spaced_layers_are_dpts():
  assert evenly_spaced_layers(12) == (2, 5, 8, 11)
  assert evenly_spaced_layers(24) == (5, 11, 17, 23)
  assert evenly_spaced_layers(4) == (0, 1, 2, 3)
  assert evenly_spaced_layers(1) == (0, 0, 0, 0) and evenly_spaced_layers(2) == (0, 0, 0, 1)


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
@pytest.mark.parametrize("task,shape", [
    ("classification", (2, 7)), ("segmentation", (2, 64, 64, 7)), ("depth", (2, 64, 64))])
def test_dense_heads_give_full_resolution_outputs(task, shape):
  model = build_task_model(fourm(), task, head=HeadOptions(num_classes=7, channels=16))
  out = model(images())
  assert out.shape == shape and bool(jnp.isfinite(out).all())
  if task == "depth":
    assert bool((out > 0).all())


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_the_detection_head_predicts_boxes_per_query_and_per_block():
  model = build_task_model(fourm(), "detection", head=HeadOptions(
      num_classes=5, num_queries=10, decoder_depth=3, num_heads=2))
  out = model(images())
  assert out.logits.shape == (2, 10, 6) and out.boxes.shape == (2, 10, 4)
  assert bool(((out.boxes >= 0) & (out.boxes <= 1)).all())
  assert len(out.auxiliary) == 2 and out.auxiliary[0][1].shape == (2, 10, 4)


def test_drop_path_is_off_in_eval_and_random_in_training():
  model = build_task_model(fourm(), "classification", head=HeadOptions(num_classes=3),
                           drop_path=0.5)
  pixels = images()
  model.eval()
  first, second = model.encoder(pixels).tokens, model.encoder(pixels).tokens
  np.testing.assert_array_equal(first, second)
  model.train()
  assert not np.allclose(model.encoder(pixels).tokens, model.encoder(pixels).tokens)
  assert model.encoder.drop_rates[0] == 0.0 and model.encoder.drop_rates[-1] == 0.5


def _tune(mode: str, steps: int = 5, **tuning):
  model = build_task_model(fourm(), "segmentation", head=HeadOptions(num_classes=4, channels=8),
                           tuning=TuningOptions(mode=mode, **tuning))
  before = nnx.state(model, nnx.Param)
  graphdef, trainable, frozen, other = step_lib.split_for_tuning(model, mode)
  tx, _ = step_lib.make_optimizer(trainable, depth=DEPTH, peak_lr=1e-2, total_steps=steps,
                                  warmup_steps=1, layer_decay=0.75)
  labels = jax.random.randint(jax.random.key(3), (2, 64, 64), 0, 4)

  def loss_fn(logits, batch):
    return dense_heads.segmentation_loss(logits, batch["label"]), {}

  train_step = step_lib.make_train_step(graphdef, tx, loss_fn, mode)
  opt_state = tx.init(trainable)
  frozen_copy = jax.tree.map(np.array, frozen)
  losses = []
  for index in range(steps):
    trainable, opt_state, metrics = train_step(
        trainable, frozen, other, opt_state, {"image": images(), "label": labels},
        jax.random.key(index))
    losses.append(float(metrics["loss"]))
  after = nnx.merge(graphdef, trainable, frozen, other)
  return before, nnx.state(after, nnx.Param), frozen_copy, frozen, trainable, losses


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "vpt", "linear"])
def test_parameter_efficient_modes_never_update_the_encoder(mode):
  before, after, frozen_copy, frozen, trainable, losses = _tune(mode)
  # Every encoder weight is frozen and bitwise what it was; the trained part moved.
  encoder_paths = {path for path, _ in nnx.to_flat_state(before)
                   if path[0] == "encoder" and path[-2:] not in (("down",), ("up",))}
  flat_after = dict(nnx.to_flat_state(after))
  for path, value in nnx.to_flat_state(before):
    if path in encoder_paths and "down" not in path and "up" not in path:
      np.testing.assert_array_equal(np.asarray(value[...]), np.asarray(flat_after[path][...]))
  jax.tree.map(np.testing.assert_array_equal, frozen_copy, jax.tree.map(np.array, frozen))
  trained_paths = [path for path, _ in nnx.to_flat_state(trainable)]
  assert trained_paths and all(path[0] in ("head", "prompts", "encoder") for path in trained_paths)
  if mode == "lora":
    assert all(path[-1] in ("down", "up") for path in trained_paths if path[0] == "encoder")
  else:
    assert not [path for path in trained_paths if path[0] == "encoder"]
  assert losses[-1] < losses[0]


def test_lora_starts_as_the_pretrained_function_and_counts_its_parameters():
  plain = build_task_model(fourm(), "classification", head=HeadOptions(num_classes=3))
  adapted = build_task_model(fourm(), "classification", head=HeadOptions(num_classes=3),
                             tuning=TuningOptions(mode="lora", lora_rank=4))
  plain.eval(), adapted.eval()
  np.testing.assert_allclose(plain.encoder(images()).tokens, adapted.encoder(images()).tokens,
                             atol=1e-6)
  hidden = int(2 * int(DIM * 4.0) / 3)
  per_block = 4 * ((DIM + 3 * DIM) + (DIM + DIM) + 2 * (DIM + hidden) + (hidden + DIM))
  lora = peft.count_params(adapted, peft.LoRAParam)
  assert lora == DEPTH * per_block
  head = peft.count_params(adapted.head)
  assert peft.count_params(adapted, peft.trainable_filter("lora")) == lora + head


def test_vpt_prompts_shallow_and_deep():
  for deep, shape in ((False, (1, 5, DIM)), (True, (DEPTH, 5, DIM))):
    model = build_task_model(fourm(), "classification", head=HeadOptions(num_classes=3),
                             tuning=TuningOptions(mode="vpt", num_prompts=5, deep_prompts=deep))
    assert model.prompts.tokens.shape == shape
    out = model.encoder(images(), prompts=model.prompts)
    assert out.tokens.shape == (2, 8, 8, DIM)  # the prompts are not among the outputs


def test_unknown_modes_and_tasks_are_refused():
  with pytest.raises(UsageError, match="tuning mode 'adapter'"):
    build_task_model(fourm(), "classification", head=HeadOptions(num_classes=3),
                     tuning=TuningOptions(mode="adapter"))
  with pytest.raises(UsageError, match="task 'keypoints'"):
    build_task_model(fourm(), "keypoints")
  with pytest.raises(UsageError, match="needs head.num_classes"):
    build_task_model(fourm(), "segmentation")


def test_layer_decay_scales_follow_depth():
  model = build_task_model(fourm(), "classification", head=HeadOptions(num_classes=3))
  _, trainable, _, _ = step_lib.split_for_tuning(model, "full")
  scales = dict(nnx.to_flat_state(step_lib.layer_decay_scales(trainable, DEPTH, 0.5)))
  by_first = {}
  for path, scale in scales.items():
    key = path[:3] if path[:2] == ("encoder", "blocks") else path[:2]
    by_first.setdefault(key, set()).add(float(scale.get_value()))
  assert by_first[("encoder", "patch_embedding")] == {0.5 ** 5}
  assert by_first[("encoder", "blocks", 0)] == {0.5 ** 4}
  assert by_first[("encoder", "blocks", 3)] == {0.5 ** 1}
  assert by_first[("head", "linear")] == {1.0}


def test_the_dense_losses():
  labels = jnp.array([[0, 1], [255, 1]])
  perfect = jax.nn.one_hot(jnp.array([[0, 1], [0, 1]]), 2) * 50.0
  assert float(dense_heads.segmentation_loss(perfect[None], labels[None])) < 1e-6
  wrong_where_ignored = perfect.at[1, 0].set(jnp.array([0.0, 50.0]))
  assert float(dense_heads.segmentation_loss(wrong_where_ignored[None], labels[None])) < 1e-6
  target = jnp.array([[1.0, 2.0], [4.0, 0.0]])  # 0: no depth there
  valid = jnp.ones((2, 2), bool)
  assert float(dense_heads.scale_invariant_log_loss(target + (target == 0), target, valid)) < 1e-5
  # With lambda = 1 a global scale costs nothing; with 0.85 it costs a little.
  scaled = 2.0 * target + (target == 0)
  assert float(dense_heads.scale_invariant_log_loss(scaled, target, valid,
                                                    variance_focus=1.0)) < 1e-5
  assert 0.2 < float(dense_heads.scale_invariant_log_loss(scaled, target, valid)) < 0.3
