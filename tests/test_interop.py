"""Reference checkpoints in and out: parity with the reference's own forward pass.

The fixtures (tests/fixtures/reference/, made by make_reference_fixtures.py running
apple/ml-4m itself) describe a reference `FM` model of each published layout with
deterministic weights, a batch, and what the reference computed on it. The tests
rebuild that model's safetensors file bit for bit, convert it with `fourm convert`, run
fourm's model on the same batch and compare.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from fourm import cli
from fourm.generation.loading import load_model
from fourm.interop import convert
from fourm.interop import reference_format as fmt
from fourm.interop.safetensors_file import ReferenceFileError, SafetensorsReader

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")
sys.path.insert(0, FIXTURES)
from fixture_values import (embedding_vectors, normalized_pixels,  # noqa: E402
                            tensor_digest, weight_values)

LAYOUTS = ("4m7_rgb", "4m7_tokens", "4m21_rgb")


def load_fixture(layout: str):
  with open(os.path.join(FIXTURES, f"{layout}.json")) as f:
    fixture = json.load(f)
  return fixture, dict(np.load(os.path.join(FIXTURES, f"{layout}.npz")))


def reference_tensors(fixture, arrays) -> dict[str, np.ndarray]:
  """The reference model's state dict, as the fixture script gave it its values."""
  shared = fixture["config"].get("share_modality_embeddings", True)
  tensors = {}
  for name, info in fixture["tensors"].items():
    shape = tuple(info["shape"])
    parts = name.split(".")
    if name in fixture["buffers"]:  # a sin-cos buffer, as the reference built it
      tensors[name] = arrays[fixture["buffers"][name]]
    elif parts[-1] == "bias" and "norm" in parts[-2]:
      tensors[name] = np.zeros(shape, np.float32)  # the bias-free LayerNorm's buffer
    elif (shared and parts[0] == "decoder_embeddings" and parts[-1] == "mod_emb"
          and parts[1] in fixture["config"]["domains_in"]):
      tensors[name] = weight_values(f"encoder_embeddings.{parts[1]}.mod_emb", shape)
    else:
      tensors[name] = weight_values(name, shape)
  return tensors


def write_reference_file(path, fixture, arrays, dtype=np.float32, drop=(), extra=None):
  tensors = reference_tensors(fixture, arrays)
  tensors = {k: v.astype(dtype) for k, v in tensors.items() if k not in drop}
  tensors.update(extra or {})
  save_file(tensors, str(path), metadata=fixture["metadata"])
  return str(path)


@pytest.fixture(scope="module", params=LAYOUTS)
def converted(request, tmp_path_factory):
  layout = request.param
  fixture, arrays = load_fixture(layout)
  tensors = reference_tensors(fixture, arrays)
  assert tensor_digest(tensors) == fixture["digest"], "fixture weights not reproduced"
  tmp = tmp_path_factory.mktemp(layout)
  source = write_reference_file(tmp / "model.safetensors", fixture, arrays)
  assert cli.main(["convert", "--from", "reference", source, "--out", str(tmp / "wd")]) == 0
  return layout, fixture, arrays, str(tmp / "wd"), source


def fourm_batch(model, arrays):
  batch = {}
  for name in model.modality_names:
    keys = [k for k in arrays if k.split("/")[0] == name]
    entry = {k.split("/")[1]: jnp.asarray(arrays[k]) for k in keys}
    if "placeholders" in entry:  # t5_caption: its vectors are rebuilt, not stored
      placeholders = np.asarray(entry.pop("placeholders"))
      channels = model.encoder_embeddings[name].proj.kernel.shape[0]
      entry["tokens"] = jnp.asarray(embedding_vectors(
          name, np.asarray(entry["input_mask"]), placeholders, channels))
    if "image" in entry:
      entry["tokens"] = jnp.asarray(normalized_pixels(np.asarray(entry.pop("image"))))
    batch[name] = entry
  return batch


def fourm_outputs(model, arrays, budgets):
  batch = fourm_batch(model, arrays)
  context, valid = model.encode(batch, input_budget=budgets[0])
  out = model.decode(batch, context, valid, target_budget=budgets[1])
  hidden, index = np.asarray(out.hidden), np.asarray(out.modality_index)
  results = {}
  for i, name in enumerate(model.modality_names):
    if not model.can_predict(name):
      continue
    chosen = np.asarray(out.valid) & (index == i)  # sample-major, in slot order
    logits = np.asarray(model.logits(name, jnp.asarray(hidden[chosen])), np.float64)
    labels = np.asarray(out.labels)[chosen]
    lse = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    results[name] = dict(logits=logits, labels=labels, logsumexp=lse,
                         loss=float(np.mean(lse - logits[np.arange(len(labels)), labels])))
  return results


def assert_matches_reference(model, arrays, fixture) -> None:
  """fourm's forward pass on the fixture batch against the reference's: per target
  modality the labels, logsumexp and probed logits (1e-4), argmax and loss."""
  expected = fixture["outputs"]
  image_size = fixture["config"]["image_size"]
  got = fourm_outputs(model, arrays, expected["budgets"])
  names = {d: fmt.fourm_modality(d, image_size)[0] for d in expected["modalities"]}
  assert set(got) == set(names.values())
  losses = []
  for domain, ref in expected["modalities"].items():
    mine = got[names[domain]]
    np.testing.assert_array_equal(mine["labels"], ref["labels"], err_msg=domain)
    np.testing.assert_allclose(mine["logsumexp"], ref["logsumexp"], atol=1e-4, err_msg=domain)
    np.testing.assert_allclose(mine["logits"][:, ref["probes"]], ref["probe_logits"],
                               atol=1e-4, err_msg=domain)
    np.testing.assert_array_equal(mine["logits"].argmax(-1), ref["argmax"], err_msg=domain)
    assert abs(mine["loss"] - ref["loss"]) < 1e-4, domain
    losses.append(mine["loss"])
  assert abs(np.mean(losses) - expected["loss"]) < 1e-4  # the "mod" reduction


def test_converted_model_matches_the_reference_forward_pass(converted):
  _, fixture, arrays, workdir, _ = converted
  assert_matches_reference(load_model(workdir).model, arrays, fixture)


def test_converted_workdir_records_what_it_came_from(converted):
  _, fixture, _, workdir, source = converted
  trained = load_model(workdir)
  assert trained.step == 0
  assert trained.config.layout == "224/16"
  # The hub class builds untied heads; the fixture's tables differ, so fourm keeps both.
  assert trained.config.model.tie_output_heads is False
  assert set(trained.config.modalities) == {
      fmt.fourm_modality(d)[0] for d in fixture["config"]["domains_in"]
      + fixture["config"]["domains_out"]}


def assert_export_round_trip(fixture, workdir: str, source: str, tmp_path) -> None:
  """`fourm convert --to reference` writes the reference file back (names, shapes, float32,
  values; positions to their tolerance) and importing that gives the same parameters."""
  from flax import nnx
  exported = str(tmp_path / "export.safetensors")
  assert cli.main(["convert", "--to", "reference", workdir, "--out", exported]) == 0
  with SafetensorsReader(source) as original, SafetensorsReader(exported) as ours:
    # What the reference's strict load_state_dict needs: the same names and shapes...
    assert sorted(ours.names()) == sorted(original.names())
    for name in original.names():
      assert ours.shape(name) == original.shape(name), name
      assert ours.dtype(name) == "F32"
      a, b = original.read(name), ours.read(name)
      if name.endswith("pos_emb"):
        np.testing.assert_allclose(b, a, atol=fmt.POSITION_TOLERANCE, err_msg=name)
      else:
        np.testing.assert_array_equal(b, a, err_msg=name)
    # ... and a config its loader parses into the one FM(config) was built from.
    assert fmt.parse_metadata(ours.metadata) == fixture["config"]
  again = tmp_path / "again"
  assert cli.main(["convert", "--from", "reference", exported, "--out", str(again)]) == 0
  first = dict(nnx.to_flat_state(nnx.state(load_model(workdir).model, nnx.Param)))
  second = dict(nnx.to_flat_state(nnx.state(load_model(str(again)).model, nnx.Param)))
  assert first.keys() == second.keys()
  for key in first:
    np.testing.assert_array_equal(np.asarray(first[key].get_value()),
                                  np.asarray(second[key].get_value()), err_msg=str(key))


def test_export_then_import_is_bitwise_identical(converted, tmp_path):
  _, fixture, _, workdir, source = converted
  assert_export_round_trip(fixture, workdir, source, tmp_path)


def test_the_reference_loaded_our_export_when_the_fixtures_were_made():
  """Recorded by make_reference_fixtures.py --check-export: the reference's own
  load_safetensors + FM(config) + load_state_dict(strict=True) on a fourm export."""
  path = os.path.join(FIXTURES, "export_checks.json")
  with open(path) as f:
    checks = json.load(f)
  for layout in LAYOUTS:
    check = checks[layout]
    assert check["loaded_strict"]
    assert abs(check["loss"] - check["fixture_loss"]) < 1e-4
    assert check["worst_probe_difference"] < 1e-4


def test_folder_source_reads_config_json(tmp_path):
  fixture, arrays = load_fixture("4m7_tokens")
  folder = tmp_path / "hub_snapshot"
  folder.mkdir()
  tensors = reference_tensors(fixture, arrays)
  save_file(tensors, str(folder / "model.safetensors"))  # hub files carry no metadata
  with open(folder / "config.json", "w") as f:
    json.dump(fixture["config"], f)
  summary = convert.import_reference(str(folder), str(tmp_path / "wd"), log=lambda _: None)
  assert summary["dtypes"] == ["F32"] and summary["derived"] > 0


def test_half_precision_files_convert_and_say_so(tmp_path, capsys):
  fixture, arrays = load_fixture("4m7_tokens")
  for dtype, name in ((np.float16, "F16"), (ml_dtypes.bfloat16, "BF16")):
    path = tmp_path / f"{name}.safetensors"
    write_reference_file(path, fixture, arrays, dtype=dtype)
    assert cli.main(["convert", "--from", "reference", str(path), "--out",
                     str(tmp_path / name)]) == 0
    assert f"({name}, read as float32)" in capsys.readouterr().out
    model = load_model(str(tmp_path / name)).model
    table = np.asarray(model.encoder_embeddings["caption"].token_emb.embedding[...])
    expected = weight_values("encoder_embeddings.caption.token_emb.weight", table.shape)
    np.testing.assert_array_equal(table, expected.astype(dtype).astype(np.float32))


# Bad input: one line naming the file and the tensor, exit 2. ------------------------------

def _convert_error(capsys, source, out):
  assert cli.main(["convert", "--from", "reference", str(source), "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "Traceback" not in err
  return err


def test_bad_files_are_one_clear_error(tmp_path, capsys):
  fixture, arrays = load_fixture("4m7_tokens")
  good = write_reference_file(tmp_path / "good.safetensors", fixture, arrays)

  text = tmp_path / "notes.safetensors"
  text.write_text("these are not tensors at all, just words in a file")
  err = _convert_error(capsys, text, tmp_path / "a")
  assert str(text) in err and "not a safetensors file" in err

  truncated = tmp_path / "truncated.safetensors"
  data = open(good, "rb").read()
  truncated.write_bytes(data[: len(data) // 2])
  err = _convert_error(capsys, truncated, tmp_path / "b")
  assert str(truncated) in err and "truncated" in err and "tensor '" in err

  missing = write_reference_file(tmp_path / "missing.safetensors", fixture, arrays,
                                 drop=("decoder.1.mlp.fc2.weight",))
  err = _convert_error(capsys, missing, tmp_path / "c")
  assert missing in err and "decoder.1.mlp.fc2.weight" in err and "missing" in err

  extra = write_reference_file(tmp_path / "extra.safetensors", fixture, arrays,
                               extra={"encoder.0.attn.q_norm.weight": np.ones(8, np.float32)})
  err = _convert_error(capsys, extra, tmp_path / "d")
  assert "encoder.0.attn.q_norm.weight" in err and "unexpected" in err

  wrong_shape = write_reference_file(
      tmp_path / "shape.safetensors", fixture, arrays,
      extra={"encoder.0.mlp.fc1.weight": np.zeros((85, 16), np.float32)})
  err = _convert_error(capsys, wrong_shape, tmp_path / "e")
  assert "encoder.0.mlp.fc1.weight" in err and "[85, 16]" in err


def test_other_architectures_and_modality_sets_are_refused(tmp_path, capsys):
  fixture, arrays = load_fixture("4m7_tokens")
  tensors = reference_tensors(fixture, arrays)
  cases = {
      "gelu": ({**fixture["metadata"], "act_layer": "GELU"}, "act_layer"),
      "qknorm": ({**fixture["metadata"], "qk_norm": "True"}, "qk_norm"),
      "unknown_modality": ({**fixture["metadata"],
                            "domains_in": "['tok_rgb@224', 'tok_flow@224']"}, "tok_flow@224"),
      "other_set": ({**fixture["metadata"], "domains_in": "['tok_rgb@224', 'caption']",
                     "domains_out": "['tok_rgb@224', 'caption']"}, "unexpected"),
  }
  for case, (metadata, needle) in cases.items():
    path = tmp_path / f"{case}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    err = _convert_error(capsys, path, tmp_path / case)
    assert str(path) in err and needle in err, (case, err)


def test_positions_that_are_not_the_sincos_ones_are_refused(tmp_path, capsys):
  fixture, arrays = load_fixture("4m7_tokens")
  name = "encoder_embeddings.tok_depth@224.pos_emb"
  learned = np.asarray(arrays[fixture["buffers"][name]]) + 0.01
  path = write_reference_file(tmp_path / "learned.safetensors", fixture, arrays,
                              extra={name: learned})
  err = _convert_error(capsys, path, tmp_path / "wd")
  assert name in err and "sin-cos" in err


def test_hub_id_without_network_is_one_clear_error(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  err = _convert_error(capsys, "EPFL-VILAB/4M-7_B_CC12M", tmp_path / "wd")
  assert "EPFL-VILAB/4M-7_B_CC12M" in err and "cannot download" in err


def test_reader_checks_offsets_against_the_header(tmp_path):
  path = tmp_path / "lying.safetensors"
  header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}).encode()
  path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
  with pytest.raises(ReferenceFileError, match="'w': 12 bytes for a F32 \\[4\\] tensor"):
    SafetensorsReader(str(path))


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_the_notebook_generates_from_a_converted_checkpoint(converted, monkeypatch):
  """The notebook's code cells, in order, with FOURM_CHECKPOINT naming the converted
  workdir: the demo-world cells say they are skipped, the converted cell generates."""
  import contextlib
  import io
  import nbformat
  from fourm import modalities
  from fourm.generation.generator import converted_from
  _, _, _, workdir, source = converted
  assert converted_from(workdir)["source"] == source
  notebook = nbformat.read(os.path.join(os.path.dirname(FIXTURES), "..", "..", "notebooks",
                                        "chained_generation.ipynb"), as_version=4)
  monkeypatch.setenv("FOURM_CHECKPOINT", workdir)
  monkeypatch.setenv("FOURM_DATA", os.path.join(workdir, "no-such-world"))
  monkeypatch.setenv("FOURM_NUM_SAMPLES", "1")
  monkeypatch.setenv("FOURM_STEPS", "2")
  namespace, printed = {}, {}
  for cell in (c for c in notebook.cells if c.cell_type == "code"):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(cell.source, namespace)
    printed[cell.source] = out.getvalue()
  skip = f"skipped: {workdir} is converted from {source}; "
  demo = [text for cell, text in printed.items() if "if DEMO_SKIPPED:" in cell]
  assert len(demo) == 3 and all(t.startswith(skip) and t.count("\n") == 1 for t in demo), demo
  text = next(t for cell, t in printed.items() if cell.startswith("if CONVERTED:"))
  assert "skipped" not in text
  assert "caption: a photo of" in text and "tok_rgb ids: [" in text, text
  result, model = namespace["result"], namespace["model"]
  assert result.generated == ("caption", "tok_rgb")
  ids = result.tokens("tok_rgb")[0].ravel()
  spec = modalities.get("tok_rgb")
  assert ids.size == spec.num_tokens(model.layout)
  assert ((ids >= 0) & (ids < spec.vocab_size)).all()
  assert " ".join(map(str, ids[:4])) in " ".join(text.replace("[", " ").split())


@pytest.mark.slow
def test_converted_checkpoints_generate_with_the_reference_schedules(converted, tmp_path):
  _, _, _, workdir, _ = converted
  from fourm.generation.generator import Generator
  generator = Generator.from_checkpoint(workdir)
  assert generator.reference_faithful
  out = tmp_path / "gen"
  assert cli.main(["generate", "--checkpoint", workdir, "--condition",
                   "caption=a red cube", "--targets", "tok_depth", "--num-samples", "1",
                   "--out", str(out), "--num-steps", "4"]) == 0
  tokens = np.load(out / "tokens.npz")["tok_depth"]
  assert tokens.shape[-1] == 196 or tokens.shape[-2:] == (14, 14)
  # The reference's temperature schedules run in the decoding loop too.
  from fourm.generation.decoding import Decoding
  result = generator.generate({"caption": "a red cube"},
                              [Decoding("tok_depth", num_steps=3,
                                        token_schedule="reference_cosine",
                                        temperature_schedule="reference_onex",
                                        temperature=2.0, temperature_end=0.5)],
                              num_samples=1, seed=0)
  assert result.tokens("tok_depth").size == 196


def _greedy(model, known, decoding, **sampler_options):
  import jax
  from fourm.generation.sampler import Sampler
  sampler = Sampler(model, **sampler_options)
  return sampler.generate(known, decoding, jax.random.key(0))[decoding.target]


def _caption_entry(model, ids):
  """The caption condition the fixture gave the reference (its words and [EOS])."""
  length = model.decoder_embeddings["caption"].spec.max_length
  caption = {"input_tokens": np.zeros((len(ids), length), np.int32),
             "input_mask": np.zeros((len(ids), length), bool)}
  caption["input_tokens"][:, :ids.shape[1]], caption["input_mask"][:, :ids.shape[1]] = ids, True
  return caption


@functools.partial(nnx.jit, static_argnames=("input_budget", "target_budget"))
def _argmax_of_undecided(model, caption, tokens, decided, input_budget, target_budget):
  """fourm's argmax tok_rgb at the undecided positions given the caption and the decided
  tokens (one program: run op by op, the replay below took 47 s)."""
  batch = {"caption": caption, "tok_rgb": {"tokens": tokens, "input_mask": decided}}
  context, valid = model.encode(batch, input_budget=input_budget)
  out = model.decode({"tok_rgb": {"tokens": tokens, "target_mask": ~decided}}, context,
                     valid, target_budget=target_budget)
  return model.logits("tok_rgb", out.hidden).argmax(-1), out.valid


def _replay_greedy_maskgit(model, caption, ref, layout):
  """The reference's greedy MaskGIT steps, replayed: at each step, given the caption and
  the tokens the reference had filled before it, fourm's argmax at the positions the
  reference filled in that step is the reference's token. (Which positions a greedy
  step fills is torch.topk's order among equal confidences there, not something to
  match: fourm fills the most confident ones.)"""
  filled_at, tokens = np.asarray(ref["filled_at_step"]), np.asarray(ref["tokens"], np.int32)
  assert [int(n) for n in np.bincount(filled_at[0])] == ref["counts"]
  for step in range(len(ref["counts"])):
    decided, remaining = filled_at < step, filled_at >= step
    # Budgets for every step (padding slots change no logit: test_step_buckets), so one
    # program serves the replay.
    argmax, valid = _argmax_of_undecided(
        model, caption, jnp.asarray(tokens), jnp.asarray(decided),
        input_budget=int(caption["input_mask"].sum(1).max()) + tokens.shape[1],
        target_budget=tokens.shape[1])
    argmax, valid = np.asarray(argmax), np.asarray(valid)
    for row in range(len(tokens)):
      predicted = np.zeros(tokens.shape[1], np.int64)
      predicted[np.flatnonzero(remaining[row])] = argmax[row][valid[row]]
      now = filled_at[row] == step
      np.testing.assert_array_equal(predicted[now], tokens[row][now],
                                    err_msg=f"{layout} step {step} row {row}")


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_greedy_generation_gives_the_reference_ids(converted):
  """caption -> tok_rgb (MaskGIT in one step, and the reference's 4-step cosine schedule
  replayed) and rgb -> caption (autoregressive), at temperature 0, against the
  reference's own GenerationSampler on the same weights."""
  from fourm.generation.decoding import Decoding
  layout, fixture, arrays, workdir, _ = converted
  model = load_model(workdir).model
  expected = fixture["outputs"]["generation"]
  ids = arrays["generation/caption_ids"]
  caption = _caption_entry(model, ids)
  ref = expected["caption_to_tok_rgb_1step"]
  got = _greedy(model, {"caption": caption}, Decoding(
      "tok_rgb", method="maskgit", num_steps=1, token_schedule=(196,), temperature=0.0))
  np.testing.assert_array_equal(np.asarray(got["tokens"]).reshape(len(ids), -1),
                                ref["tokens"], err_msg=layout)
  _replay_greedy_maskgit(model, caption, expected["caption_to_tok_rgb_cosine4"], layout)
  if "rgb_to_caption" in expected:
    pixels = normalized_pixels(arrays["generation/image"])
    rgb = {"tokens": pixels, "input_mask": np.ones((len(pixels), 196), bool)}
    # The reference prompts the encoder with [S_1]: `sentinel_prompt`, which converted
    # checkpoints turn on (test_converted_checkpoints_prompt_sequences_as_the_reference).
    got = _greedy(model, {"rgb": rgb}, Decoding("caption", temperature=0.0),
                  sentinel_prompt=True)
    for row, ref_ids in enumerate(expected["rgb_to_caption"]["ids"]):
      text = np.asarray(got["input_tokens"][row])[np.asarray(got["input_mask"][row])]
      generated = ref_ids[1:]  # after the [S_1] the decoder starts from
      np.testing.assert_array_equal(text[:len(generated)], generated,
                                    err_msg=f"{layout} row {row}")


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_roar_asks_only_for_the_tokens_of_its_step_as_the_reference(converted, monkeypatch):
  """ROAR at temperature 0 in the reference's 4-step cosine schedule: given the order the
  reference drew (its torch.rand), fourm's ROAR loop gives the reference's tokens,
  which it only does by querying just the step's positions, as the reference does."""
  from fourm.generation import sampling
  from fourm.generation.decoding import Decoding
  layout, fixture, arrays, workdir, _ = converted
  model = load_model(workdir).model
  ref = fixture["outputs"]["generation"]["caption_to_tok_rgb_roar_cosine4"]
  filled_at = np.asarray(ref["filled_at_step"])
  # fourm commits the highest scores among the undecided: the reference's order.
  scores = jnp.asarray(len(ref["counts"]) - filled_at, jnp.float32)
  monkeypatch.setattr(sampling, "random_order_scores", lambda key, shape: scores)
  caption = _caption_entry(model, arrays["generation/caption_ids"])
  got = _greedy(model, {"caption": caption}, Decoding(
      "tok_rgb", method="roar", num_steps=4, token_schedule="reference_cosine",
      temperature=0.0))
  np.testing.assert_array_equal(np.asarray(got["tokens"]).reshape(filled_at.shape),
                                ref["tokens"], err_msg=layout)


def test_converted_checkpoints_prompt_sequences_as_the_reference(converted):
  """Sequences from nothing start from an encoder [S_1] and text conditions carry no
  [EOS], as the reference's GenerationSampler and `custom_text` prompt them."""
  from fourm.generation.generator import Generator
  _, _, _, workdir, _ = converted
  generator = Generator.from_checkpoint(workdir)
  assert generator.sampler.sentinel_prompt
  entry = generator.encode_conditions({"caption": "a red cube"}, 1)["caption"]
  text = entry["input_tokens"][0][entry["input_mask"][0]]
  assert len(text) == 3 and 3 not in text  # "a", "red", "cube"; no [EOS] (id 3)
  own = Generator(generator.model, {})  # fourm's defaults: as training shows texts
  entry = own.encode_conditions({"caption": "a red cube"}, 1)["caption"]
  assert list(entry["input_tokens"][0][entry["input_mask"][0]])[-1] == 3
  assert not own.sampler.sentinel_prompt
