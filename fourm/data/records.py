"""The on-disk record format: one ArrayRecord record per sample, every modality it has.

A dataset is a directory::

    DIR/dataset_info.json                     # written last: its presence marks a complete dataset
    DIR/train-00000-of-00004.array_record     # ArrayRecord shards, group_size 1 (random access)
    DIR/val-00000-of-00001.array_record

A record is a msgpack map keyed by modality name. Arrays are stored raw with dtype and
shape; text as str; boxes as {"boxes": [N, 4] array, "classes": [str]}; user photos may
stay as their original JPEG/PNG bytes (`EncodedImage`) and are decoded on read. A
modality a sample lacks is absent from its record, never zero-filled.

Several directories with the same splits and record counts can be read side by side
(`RecordSource([world, world_labels])`): this is how pseudo-labels and token records
join the records they were computed from without rewriting them.

Every failure names the file, the record index and the field (`RecordError`).

This module is the format's one import for callers (`records.RecordSource`, ...); each
job lives in its own module:

  record_codec       a sample to a record's bytes and back (`EncodedImage`)
  record_validation  what a field may hold (`validate_field`, `validate_sample`)
  dataset_info       `dataset_info.json` (`DatasetInfo`, `INFO_FILE`)
  record_writer      shards and the info file (`write_shard`, `write_info`)
  record_reader      random access to a split (`RecordSource`)
"""

from fourm.data.dataset_info import FORMAT_NAME, FORMAT_VERSION, INFO_FILE, DatasetInfo, SplitInfo
from fourm.data.record_codec import EncodedImage, decode_image, decode_sample, encode_sample
from fourm.data.record_reader import READER_OPTIONS, RecordSource, split_name, split_slice
from fourm.data.record_validation import validate_field, validate_sample
from fourm.data.record_writer import (WRITER_OPTIONS, shard_name, split_into_shards, write_info,
                                      write_shard)
from fourm.errors import RecordError

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "INFO_FILE", "READER_OPTIONS", "WRITER_OPTIONS",
    "DatasetInfo", "EncodedImage", "RecordError", "RecordSource", "SplitInfo",
    "decode_image", "decode_sample", "encode_sample", "shard_name", "split_into_shards",
    "split_name", "split_slice",
    "validate_field", "validate_sample", "write_info", "write_shard",
]
