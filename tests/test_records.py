"""The record format: round trips, side-by-side stores, and errors that name what is wrong."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from fourm.data import records
from fourm.data.records import EncodedImage, RecordError, RecordSource
from tests.helpers import striped_sample, write_dataset


def _png_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def test_round_trip_of_every_value_kind_is_exact_and_deterministic():
  sample = striped_sample()
  sample["key"] = "train/000001"
  data = records.encode_sample(sample)
  assert data == records.encode_sample(dict(reversed(list(sample.items()))))  # key order free
  back = records.decode_sample(data)
  assert set(back) == set(sample)
  for name in ("rgb", "depth", "normal", "semseg", "clip"):
    np.testing.assert_array_equal(back[name], sample[name])
    assert back[name].dtype == sample[name].dtype
  np.testing.assert_array_equal(back["det"]["boxes"], sample["det"]["boxes"])
  assert back["det"]["classes"] == ["stripe2"] and back["caption"] == "stripes."
  only = records.decode_sample(data, keep=["caption", "nonexistent"])
  assert only == {"caption": "stripes."}


def test_encoded_images_decode_on_read(tmp_path):
  rgb = striped_sample()["rgb"]
  write_dataset(str(tmp_path), {"train": [{"rgb": EncodedImage(_png_bytes(rgb), "png")}]})
  np.testing.assert_array_equal(RecordSource(str(tmp_path))[0]["rgb"], rgb)


def test_dataset_info_describes_shapes_counts_and_splits(tmp_path):
  samples = [striped_sample() for _ in range(25)]
  del samples[3]["caption"]  # a missing modality stays missing
  info = write_dataset(str(tmp_path), {"train": samples, "val": samples[:5]})
  assert info.splits["train"].num_records == 25 and len(info.splits["train"].shards) == 3
  assert info.modalities["rgb"]["shape"] == [48, 64, 3]
  assert info.modalities["caption"]["count"] == 24 + 4  # val repeats sample 3 too
  loaded = records.DatasetInfo.load(str(tmp_path))
  assert loaded == info
  source = RecordSource(str(tmp_path), "train")
  assert len(source) == 25 and "caption" not in source[3] and source[4]["caption"]
  with pytest.raises(RecordError, match=r"record 3: field 'caption': missing modalities"):
    RecordSource(str(tmp_path), "train", modalities=["rgb", "caption"])[3]


@pytest.mark.parametrize("name, value, message", [
    ("depth", np.ones((48, 64), np.float64), "expected dtype float32, got float64"),
    ("depth", np.ones((48, 64, 1), np.float32), r"expected shape \[H, W\]"),
    ("normal", np.ones((48, 64), np.float32), r"expected shape \[H, W, 3\]"),
    ("semseg", np.ones((40, 64), np.uint8), "does not match the sample's other images"),
    ("depth", np.full((48, 64), np.nan, np.float32), "contains NaN or Inf"),
    ("caption", b"bytes", "expected text"),
    ("det", {"boxes": np.array([[0.5, 0, 0.2, 1]], np.float32), "classes": ["x"]},
     "min <= max"),
    ("det", {"boxes": np.zeros((2, 4), np.float32), "classes": ["x"]}, "classes must be 2"),
    ("clip", np.ones((8, 8), np.float32), r"expected shape \[G, G, D\]"),
    ("mystery", np.ones(3), "unknown raw modality 'mystery'"),
])
def test_bad_fields_raise_one_error_naming_file_record_and_field(name, value, message):
  sample = striped_sample()
  sample[name] = value
  with pytest.raises(RecordError, match=message) as caught:
    records.validate_sample(sample, path="data/train-00000-of-00001.array_record", record=7)
  text = str(caught.value)
  assert "train-00000-of-00001.array_record" in text and "record 7" in text
  assert f"field {name!r}" in text


def test_writer_refuses_bad_samples_and_leaves_no_partial_shard(tmp_path):
  bad = striped_sample()
  bad["depth"] = bad["depth"].astype(np.float16)
  path = str(tmp_path / records.shard_name("train", 0, 1))
  with pytest.raises(RecordError, match="record 1: field 'depth'"):
    records.write_shard(path, [striped_sample(), bad])
  assert os.listdir(tmp_path) == []


def test_corrupt_record_and_truncated_shard_name_the_file(tmp_path):
  from array_record.python import array_record_module
  directory = str(tmp_path / "corrupt")
  write_dataset(directory, {"train": [striped_sample() for _ in range(4)]})
  shard = os.path.join(directory, records.shard_name("train", 0, 1))
  writer = array_record_module.ArrayRecordWriter(shard, records.WRITER_OPTIONS)
  for i in range(4):
    writer.write(b"\xc1 not msgpack" if i == 2 else records.encode_sample(striped_sample()))
  writer.close()
  source = RecordSource(directory)
  source[1]
  with pytest.raises(RecordError, match=r"train-00000-of-00001.array_record: record 2: "
                                        r"not a valid record"):
    source[2]

  with open(shard, "r+b") as f:  # cut the shard in half
    f.truncate(os.path.getsize(shard) // 2)
  # The source checks every shard when it opens: a truncated one fails at once.
  with pytest.raises(RecordError, match=r"train-00000-of-00001.array_record: cannot open "
                                        r"the shard"):
    RecordSource(directory)


def test_metadata_that_does_not_describe_the_shards_is_refused_at_open(tmp_path):
  directory = str(tmp_path / "miscounted")
  write_dataset(directory, {"train": [striped_sample() for _ in range(4)]},
                records_per_shard=2)
  info_path = os.path.join(directory, records.INFO_FILE)
  with open(info_path) as f:
    original = json.load(f)
  info = json.loads(json.dumps(original))
  info["splits"]["train"]["shard_lengths"] = [2, 3]
  info["splits"]["train"]["num_records"] = 5
  with open(info_path, "w") as f:
    json.dump(info, f)
  with pytest.raises(RecordError, match=r"train-00001-of-00002.array_record: shard holds 2 "
                                        r"records but dataset_info.json says 3"):
    RecordSource(directory)
  info["splits"]["train"]["shard_lengths"] = [2, 2]
  with open(info_path, "w") as f:
    json.dump(info, f)
  with pytest.raises(RecordError, match=r"dataset_info.json: split 'train' says num_records 5 "
                                        r"but its shard lengths add up to 4"):
    RecordSource(directory)
  from fourm import cli  # `fourm info` reports only counts the shards hold
  assert cli.main(["info", directory]) == 2


def test_missing_or_foreign_dataset_directories(tmp_path):
  with pytest.raises(RecordError, match="no such dataset directory"):
    RecordSource(str(tmp_path / "nope"))
  with pytest.raises(RecordError, match="no dataset_info.json"):
    RecordSource(str(tmp_path))
  (tmp_path / "dataset_info.json").write_text('{"format": "something-else"}')
  with pytest.raises(RecordError, match="invalid dataset info"):
    RecordSource(str(tmp_path))
  write_dataset(str(tmp_path / "ok"), {"train": [striped_sample()]})
  with pytest.raises(RecordError, match="no split 'val'"):
    RecordSource(str(tmp_path / "ok"), "val")


def test_side_by_side_stores_join_record_by_record(tmp_path):
  base = [striped_sample() for _ in range(12)]
  for i, sample in enumerate(base):
    sample["caption"] = f"sample {i}"
  write_dataset(str(tmp_path / "rgb"), {"train": [{"rgb": s["rgb"], "caption": s["caption"]}
                                                  for s in base]}, records_per_shard=5)
  write_dataset(str(tmp_path / "labels"), {"train": [{"depth": s["depth"]} for s in base]},
                records_per_shard=7)
  source = RecordSource([str(tmp_path / "rgb"), str(tmp_path / "labels")])
  assert source.modalities == ["caption", "depth", "rgb"]
  assert source[9]["caption"] == "sample 9" and source[9]["depth"].shape == (48, 64)

  write_dataset(str(tmp_path / "short"), {"train": [{"depth": s["depth"]} for s in base[:5]]})
  with pytest.raises(RecordError, match="disagree on the size"):
    RecordSource([str(tmp_path / "rgb"), str(tmp_path / "short")])
  with pytest.raises(RecordError, match="'depth' is stored in both"):
    RecordSource([str(tmp_path / "labels"), str(tmp_path / "labels")])


def test_a_part_of_a_split_reads_as_tfds_writes_it(tmp_path):
  samples = [striped_sample() for _ in range(20)]
  for i, sample in enumerate(samples):
    sample["caption"] = f"sample {i}"
  write_dataset(str(tmp_path / "d"), {"train": samples}, records_per_shard=7)
  whole = RecordSource(str(tmp_path / "d"), "train")
  cases = {"train[:5]": range(0, 5), "train[15:]": range(15, 20), "train[8:12]": range(8, 12),
           "train[-3:]": range(17, 20), "train[:25%]": range(0, 5), "train[90%:]": range(18, 20)}
  for split, expected in cases.items():
    part = RecordSource(str(tmp_path / "d"), split)
    assert len(part) == len(expected), split
    assert [s["caption"] for s in part] == [whole[i]["caption"] for i in expected], split
  with pytest.raises(IndexError, match=r"out of range \[0, 5\) of split 'train\[:5\]'"):
    RecordSource(str(tmp_path / "d"), "train[:5]")[5]
  with pytest.raises(RecordError, match=r"split 'train\[5:5\]' selects no records of the 20"):
    RecordSource(str(tmp_path / "d"), "train[5:5]")
  for bad in ("train[:5", "train[%:]", "train[1:2:3]"):
    with pytest.raises(RecordError, match=r"expected NAME or NAME\[START:STOP\]"):
      RecordSource(str(tmp_path / "d"), bad)
  with pytest.raises(RecordError, match="no split 'val'"):
    RecordSource(str(tmp_path / "d"), "val[:5]")
  assert records.split_name("train[:64]") == "train"
  assert records.split_slice("train[:64]", 1000) == slice(0, 64)
