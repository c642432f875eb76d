"""`fourm tokenize` on datasets whose records lack the field it tokenizes: an instruction
dataset (`fourm synth --instructions`) holds semseg in its segment records only, and its
edited/ store an image in its edit records only (the others are empty). A record without
the field gets a token record without those tokens, the job says how many, the token
stores stay aligned record by record, and the pipeline masks what a sample lacks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fourm import cli, modalities
from fourm.data import derived, instructions, patch_tokens, records
from fourm.data.masking import AlphasMixture, MaskSample
from fourm.data.pipeline import Pipeline, PipelineConfig
from fourm.data.records import RecordSource
from fourm.errors import RecordError, UsageError
from tests.helpers import write_dataset

GRID = modalities.SMALL_LAYOUT.grid
NUM = 24  # 22 train (shards of 7, 8, 7) and 2 val records


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """An instruction dataset of all four tasks: 'D', and its tokens as a user makes them:
  'semseg' (tok_semseg of D), 'edited' (tok_rgb of D/edited), with what the jobs printed."""
  root = tmp_path_factory.mktemp("mixed")
  dataset = str(root / "instr")
  instructions.write_instructions(dataset, NUM, 64, 0, tasks=instructions.TASKS,
                                  records_per_shard=8, workers=1, progress=False,
                                  log=lambda _: None)
  paths, printed = {"D": dataset}, {}
  for name, source, modality in (("semseg", dataset, "tok_semseg"),
                                 ("edited", os.path.join(dataset, instructions.EDITED_DIR),
                                  "tok_rgb")):
    paths[name] = str(root / f"tok_{name}")
    lines = []
    patch_tokens.write_patch_tokens(source, paths[name], modalities.SMALL_LAYOUT, (modality,),
                                    progress=False, log=lines.append)
    printed[name] = lines
  return paths, printed


def _tasks(dataset: str) -> dict[str, str]:
  """{key: task} of every record, made again from the generator (not read from the data)."""
  return {f"{split}/{i:06d}": instructions.regenerate(dataset, f"{split}/{i:06d}").task
          for split, count in (("train", 22), ("val", 2)) for i in range(count)}


def test_tokens_are_written_where_the_record_has_the_field_and_counted(data):
  paths, printed = data
  tasks = _tasks(paths["D"])
  without = {"semseg": sum(task != "segment" for task in tasks.values()),
             "edited": sum(task != "edit" for task in tasks.values())}
  assert 0 < without["semseg"] < NUM and 0 < without["edited"] < NUM  # a mixed dataset
  assert printed["semseg"] == [
      f"tok_semseg: {without['semseg']} of {NUM} records have no semseg (written without it)"]
  assert printed["edited"] == [
      f"tok_rgb: {without['edited']} of {NUM} records have no rgb (written without it)"]
  info = records.DatasetInfo.load(paths["semseg"])
  assert info.metadata["without_source"] == {
      "tok_semseg": {"source": "semseg", "records": without["semseg"], "of": NUM}}
  assert info.modalities["tok_semseg"]["count"] == NUM - without["semseg"]
  source = records.DatasetInfo.load(paths["D"])
  for name in ("semseg", "edited"):  # one token record per record: same shards, same order
    tokens = records.DatasetInfo.load(paths[name])
    for split in ("train", "val"):
      assert tokens.splits[split].shards == source.splits[split].shards
      assert tokens.splits[split].shard_lengths == source.splits[split].shard_lengths


def test_side_by_side_records_hold_each_samples_own_answer_tokens(data):
  paths, _ = data
  tasks = _tasks(paths["D"])
  semseg, rgb = (patch_tokens.quantizer_for(n) for n in ("tok_semseg", "tok_rgb"))
  for split in ("train", "val"):
    joined = RecordSource([paths["D"], paths["semseg"], paths["edited"]], split)
    edited = RecordSource(os.path.join(paths["D"], instructions.EDITED_DIR), split)
    for i in range(len(joined)):
      sample, task = joined[i], tasks[joined[i]["key"]]
      assert {"key", "rgb", "instruction"} <= set(sample)
      assert ("tok_semseg" in sample) == (task == "segment") == ("semseg" in sample)
      assert ("tok_rgb" in sample) == (task == "edit")
      if task == "segment":
        np.testing.assert_array_equal(sample["tok_semseg"], semseg.encode(sample["semseg"], GRID))
      if task == "edit":  # the edited scene's tokens, not the source's
        answer = instructions.regenerate(paths["D"], sample["key"]).answer["rgb"]
        np.testing.assert_array_equal(edited[i]["rgb"], answer)
        np.testing.assert_array_equal(sample["tok_rgb"], rgb.encode(answer, GRID))
      else:  # the edited store's record of another task holds nothing, and reads so
        assert edited[i] == {}


def test_the_pipeline_masks_the_tokens_a_sample_lacks(data):
  paths, _ = data
  names = ("tok_rgb", "tok_semseg")
  masker = MaskSample(names, modalities.SMALL_LAYOUT, 16, 16, AlphasMixture.uniform(names))
  config = PipelineConfig(data=(paths["D"], paths["semseg"], paths["edited"]), batch_size=22,
                          augment=False, shuffle=False, num_epochs=1)
  batch = next(Pipeline(config, transform=masker).iterator())
  source = RecordSource([paths["semseg"], paths["edited"]], "train")
  for row in range(22):
    sample = source[int(batch["meta"]["record"][row])]
    for name in names:
      entry = batch[name]
      used = entry["input_mask"][row].any() or entry["target_mask"][row].any()
      if name not in sample:  # absent: no tokens in or out
        assert not used
      else:
        assert used
        np.testing.assert_array_equal(entry["tokens"][row], sample[name].reshape(-1))


def test_the_cli_tokenizes_the_instruction_dataset_and_resumes_with_the_same_count(
    data, tmp_path, capsys):
  paths, printed = data
  out = str(tmp_path / "tok")
  assert cli.main(["tokenize", "--data", paths["D"], "--out", out, "--method", "patches",
                   "--modalities", "tok_semseg", "--quiet"]) == 0
  assert printed["semseg"][0] in capsys.readouterr().out
  shards = sorted(f for f in os.listdir(out) if f.endswith(".array_record"))
  os.remove(os.path.join(out, shards[0]))  # as if killed while writing it
  assert cli.main(["tokenize", "--data", paths["D"], "--out", out, "--method", "patches",
                   "--modalities", "tok_semseg", "--quiet"]) == 0
  text = capsys.readouterr().out
  assert "resuming: 3 of 4 shards" in text and printed["semseg"][0] in text
  # The finished shards' counts come from their sidecars: the total is the same.
  assert records.DatasetInfo.load(out).metadata["without_source"] == \
      records.DatasetInfo.load(paths["semseg"]).metadata["without_source"]


def test_a_field_no_record_holds_is_an_error_naming_it(data, tmp_path, capsys):
  paths, _ = data
  out = str(tmp_path / "depth")
  assert cli.main(["tokenize", "--data", paths["D"], "--out", out, "--method", "patches",
                   "--modalities", "tok_depth", "--quiet"]) == 2
  assert "has 'depth', which tok_depth is made from" in capsys.readouterr().err
  assert not os.path.exists(out)  # refused before anything was written


def test_required_reads_and_bad_records_stay_strict(data, tmp_path):
  paths, _ = data
  edited = os.path.join(paths["D"], instructions.EDITED_DIR)
  tasks = list(_tasks(paths["D"]).values())
  with pytest.raises(RecordError, match=r"missing modalities \['rgb'\]"):
    RecordSource(edited, "train", ["rgb"])[tasks.index("segment")]
  with pytest.raises(RecordError, match="the record holds no modality"):
    records.write_shard(str(tmp_path / "x.array_record"), [{}])  # not without allow_empty
  with pytest.raises(RecordError, match="field 'rgb'"):  # a wrong dtype is still refused
    records.validate_sample({"rgb": np.zeros((8, 8, 3), np.float32)})


def test_grid_and_global_tokenizers_skip_records_without_the_vector(tmp_path):
  """tokenizers_vq's job (`fourm tokenize --tokenizers`) does as the patch job does."""
  from tests.test_tokenize_global import NAME, RAW, tiny_model, vectors
  from fourm.interop import tokenizer_mlp
  from tokenizers_vq import tokenize
  from tokenizers_vq.mlp_vq import MLPTokenizer
  model = tiny_model()
  workdir = str(tmp_path / "tok")
  tokenizer_mlp.save_mlp_tokenizer(model, workdir)
  holey, out = str(tmp_path / "holey"), str(tmp_path / "out")
  v = vectors(3, 0)
  write_dataset(holey, {"train": [{"key": "train/0", RAW: v[0]}, {"key": "train/1"},
                                  {"key": "train/2", RAW: v[2]}]})
  lines = []
  tokenize.tokenize_dataset(holey, out, [f"{NAME}={workdir}"], batch_size=4, progress=False,
                            log=lines.append)
  assert lines == [f"{NAME}: 1 of 3 records have no {RAW} (written without it)"]
  alone = RecordSource(out, "train")  # the token store by itself: an empty record reads
  assert alone[1] == {}
  expected = MLPTokenizer(model, name=RAW).tokenize(np.stack([v[0], v[2]]))
  np.testing.assert_array_equal(np.stack([alone[0][NAME], alone[2][NAME]]), expected)

  keys_only = str(tmp_path / "keys")
  write_dataset(keys_only, {"train": [{"key": "train/0"}]})
  with pytest.raises(UsageError, match=f"has '{RAW}', which {NAME} is made from"):
    tokenize.tokenize_dataset(keys_only, str(tmp_path / "none"), [f"{NAME}={workdir}"],
                              progress=False, log=lambda _: None)


def test_a_derivation_must_not_fill_in_what_the_source_lacks(tmp_path):
  holey = str(tmp_path / "holey")
  write_dataset(holey, {"train": [{"key": "a", "semseg": np.zeros((8, 8), np.uint8)},
                                  {"key": "b"}]})
  zero_filled = lambda samples: [{"tok_semseg": np.zeros((2, 2), np.int32)} for _ in samples]
  with pytest.raises(RecordError, match="record 1: field 'tok_semseg': the derivation made "
                     "tok_semseg for a record without 'semseg'"):
    derived.write_derived(holey, str(tmp_path / "out"), zero_filled, job={"x": 1}, name="t",
                          modalities=["semseg"], optional={"tok_semseg": "semseg"},
                          progress=False, log=lambda _: None)
