"""The grain pipeline: sharding, global-batch invariance, exact resume, padding, workers."""

import numpy as np
import pytest

from fourm.data import pipeline
from fourm.data.pipeline import Pipeline, PipelineConfig
from fourm.data.records import RecordError
from tests.helpers import striped_sample, write_dataset

NUM_RECORDS = 37  # deliberately not a multiple of any batch size used here


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("pipeline") / "data")
  samples = []
  for i in range(NUM_RECORDS):
    sample = striped_sample(height=24, width=32, stripe=4)
    sample["rgb"] = np.full_like(sample["rgb"], i)  # record identity visible in the pixels
    sample["caption"] = f"sample {i}"
    sample["key"] = f"train/{i:06d}"
    samples.append(sample)
  write_dataset(directory, {"train": samples}, records_per_shard=10)
  return directory


def _config(dataset, **kwargs):
  defaults = dict(data=(dataset,), batch_size=8, resolution=16, seed=3, read_threads=2)
  return PipelineConfig(**{**defaults, **kwargs})


def _records(batches, valid_only=True):
  out = []
  for batch in batches:
    keep = batch["meta"]["valid"] if valid_only else np.ones_like(batch["meta"]["valid"])
    out += batch["meta"]["record"][keep].tolist()
  return out


def test_batches_have_static_shapes_and_carry_their_records(dataset):
  batch = next(Pipeline(_config(dataset)).iterator())
  assert batch["rgb"].shape == (8, 16, 16, 3) and batch["depth"].shape == (8, 16, 16)
  assert batch["det"]["boxes"].shape == (8, 64, 4) and batch["det"]["valid"][:, 0].all()
  assert batch["caption"].dtype == object
  for row in range(8):
    record = batch["meta"]["record"][row]
    assert batch["caption"][row] == f"sample {record}"
    assert (batch["rgb"][row] == record).all()  # the pixels came with their record
  samples = pipeline.unbatch(batch)
  assert samples[0]["caption"] == batch["caption"][0] and len(samples[0]["det"]["boxes"]) == 1


def test_two_processes_see_disjoint_shards_whose_union_is_the_epoch(dataset):
  seen = []
  for process in range(2):
    config = _config(dataset, num_epochs=1, process_index=process, process_count=2)
    seen.append(_records(Pipeline(config)))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(NUM_RECORDS))
  # Every process yields the same number of batches, padding marked invalid.
  counts = [len(list(Pipeline(_config(dataset, num_epochs=1, process_index=p,
                                      process_count=2)))) for p in range(2)]
  assert counts == [5, 5]  # ceil(37 / 8) global batches, 4 samples per process each


def test_global_batches_do_not_depend_on_the_process_count(dataset):
  single = list(zip(range(4), Pipeline(_config(dataset))))
  for k, batch in single:
    parts = []
    for process in range(4):
      config = _config(dataset, process_index=process, process_count=4)
      it = Pipeline(config).iterator()
      for _ in range(k + 1):
        part = next(it)
      parts.append(part)
    assert sorted(_records(parts)) == sorted(_records([batch]))
    # Same samples, same augmentation: compare pixels record by record.
    by_record = {r: d for p in parts for r, d in zip(p["meta"]["record"], p["depth"])}
    for record, depth in zip(batch["meta"]["record"], batch["depth"]):
      np.testing.assert_array_equal(by_record[record], depth)


def test_restoring_the_iterator_state_continues_with_identical_batches(dataset):
  it = Pipeline(_config(dataset)).iterator()
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]  # crosses the epoch boundary at 37 samples
  resumed = Pipeline(_config(dataset)).iterator()
  resumed.set_state(state)
  for want, got in zip(expected, (next(resumed) for _ in range(4))):
    np.testing.assert_array_equal(want["meta"]["record"], got["meta"]["record"])
    np.testing.assert_array_equal(want["rgb"], got["rgb"])
    np.testing.assert_array_equal(want["normal"], got["normal"])
    np.testing.assert_array_equal(want["det"]["boxes"], got["det"]["boxes"])


def test_epochs_are_reshuffled_and_seeds_matter(dataset):
  batches = list(Pipeline(_config(dataset, num_epochs=2)))
  records = _records(batches)
  first, second = records[:NUM_RECORDS], records[NUM_RECORDS:]
  assert sorted(first) == sorted(second) == list(range(NUM_RECORDS))
  assert first != second
  other = _records(Pipeline(_config(dataset, num_epochs=1, seed=4)))
  assert other != first
  epochs = np.concatenate([b["meta"]["epoch"][b["meta"]["valid"]] for b in batches])
  assert epochs.tolist() == [0] * NUM_RECORDS + [1] * NUM_RECORDS


def test_finite_stream_pads_the_last_batch_and_drops_nothing(dataset):
  config = _config(dataset, num_epochs=1, shuffle=False, augment=False)
  batches = list(Pipeline(config))
  assert len(batches) == Pipeline(config).num_batches == 5  # ceil(37 / 8)
  assert _records(batches) == list(range(NUM_RECORDS))
  assert sum(b["meta"]["valid"].sum() for b in batches) == NUM_RECORDS


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(dataset):
  plain = list(zip(range(3), Pipeline(_config(dataset))))
  workers = Pipeline(_config(dataset, worker_count=2)).iterator()
  for _, want in plain:
    got = next(workers)
    np.testing.assert_array_equal(want["meta"]["record"], got["meta"]["record"])
    np.testing.assert_array_equal(want["depth"], got["depth"])


def test_bad_configs_and_missing_modalities_fail_up_front(dataset):
  with pytest.raises(ValueError, match="multiple of the process count"):
    _config(dataset, batch_size=6, process_count=4)
  with pytest.raises(RecordError, match=r"no record of split 'train' has modalities \['tok_rgb'\]"):
    Pipeline(_config(dataset, modalities=("rgb", "tok_rgb")))
  with pytest.raises(RecordError, match="exceed max_boxes=0"):
    next(Pipeline(_config(dataset, max_boxes=0)).iterator())


@pytest.fixture(scope="module")
def token_dataset(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tokens") / "data")
  rng = np.random.default_rng(0)
  samples = [{"tok_rgb": rng.integers(0, 16384, (8, 8)).astype(np.int32),
              "tok_depth": rng.integers(0, 8192, (8, 8)).astype(np.int32),
              "caption": f"sample {i}"} for i in range(12)]
  write_dataset(directory, {"train": samples}, records_per_shard=5)
  return directory


def _count_tokens(sample, rng):
  """A stand-in for the masking sampler: a nested dict per modality, random draws."""
  return {"tok_rgb": {"tokens": sample["tok_rgb"].reshape(-1),
                      "input_mask": rng.uniform(size=64) < 0.5},
          "caption": sample["caption"]}


def test_token_records_pass_through_and_the_transform_hook_masks_them(token_dataset):
  config = _config(token_dataset, batch_size=4, augment=False, num_epochs=1)
  batch = next(Pipeline(config, transform=_count_tokens).iterator())
  assert batch["tok_rgb"]["tokens"].shape == (4, 64) and batch["tok_rgb"]["tokens"].dtype == np.int32
  assert batch["tok_rgb"]["input_mask"].dtype == bool and batch["caption"].shape == (4,)
  again = next(Pipeline(config, transform=_count_tokens).iterator())
  np.testing.assert_array_equal(batch["tok_rgb"]["input_mask"], again["tok_rgb"]["input_mask"])
  # The transform's draws are independent of the augmentation's (a separate stream).
  raw = next(Pipeline(config).iterator())
  np.testing.assert_array_equal(raw["tok_rgb"].reshape(4, 64), batch["tok_rgb"]["tokens"])
  with pytest.raises(ValueError, match="cannot follow a random crop"):
    next(Pipeline(_config(token_dataset, batch_size=4)).iterator())


def test_transform_errors_name_the_record(token_dataset):
  def refuse(sample, rng):
    raise RecordError("token id 99999 is outside the vocabulary", field="tok_rgb")
  with pytest.raises(RecordError, match=r"record \d+: field 'tok_rgb': token id 99999"):
    next(Pipeline(_config(token_dataset, batch_size=4, augment=False), transform=refuse).iterator())


def test_token_ids_outside_the_vocabulary_are_refused_at_write_time(tmp_path):
  bad = {"tok_semseg": np.full((8, 8), 4096, np.int32)}
  with pytest.raises(RecordError, match=r"field 'tok_semseg': token id 4096 is outside the "
                                        r"vocabulary \[0, 4096\)"):
    write_dataset(str(tmp_path), {"train": [bad]})


def test_starting_at_a_batch_continues_the_stream_on_any_process_count(dataset):
  whole = Pipeline(_config(dataset, batch_size=4)).iterator()
  expected = [next(whole) for _ in range(5)][3:]
  for process_count in (1, 2):
    parts = [Pipeline(_config(dataset, batch_size=4, process_index=i,
                              process_count=process_count)).iterator(start_batch=3)
             for i in range(process_count)]
    for batch in expected:
      got = [next(part) for part in parts]
      records = sorted(r for g in got for r in g["meta"]["record"].tolist())
      assert records == sorted(batch["meta"]["record"].tolist())
      rgb = np.concatenate([g["rgb"] for g in got])
      assert sorted(map(bytes, rgb)) == sorted(map(bytes, batch["rgb"]))  # same augmentation
