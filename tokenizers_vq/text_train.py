"""Trains a WordPiece text vocabulary on a dataset's captions, in the 4M layout.

The trained vocabulary keeps the reference's ids for everything that is not a word,
so the masking (`TextSpecialIds` defaults) and the box coder work unchanged:

  [PAD]=0 [UNK]=1 [SOS]=2 [EOS]=3, [S_0]..[S_199] = 4..203,
  v0=0..v3=999 = 204..4203, then the dataset's class names, then the learnt word pieces.

Class names (from the records' `det` classes and the `classes` list of each
dataset_info.json's metadata) are added as single tokens, as the reference adds the
COCO names: a multi-word name like "traffic light" is then one token in captions and
in box sequences alike. They are lowercased and whitespace-collapsed (the BERT
normalizer runs before they are matched) and sorted, so the vocabulary does not depend
on the order in which records are read.

The normalizer, pre-tokenizer, model and decoder are the reference's (lowercasing BERT
normalizer, BERT pre-tokenizer, WordPiece with "##" continuations). All captions are
held in memory while training (the trainer needs the class names before it starts).

Not deterministic: the library's trainer breaks ties between equally frequent pairs in
hash-map order, so two runs on the same captions can number the word pieces
differently and, where ties fall at the size limit, keep different ones. The reserved
ids and class-name tokens are fixed. Train once and keep the file with the token
records made with it.

    fourm tokenizer train-text --data DIR [DIR ...] --out FILE [--vocab-size N]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Sequence

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers
from tqdm import tqdm

from fourm import modalities
from fourm.data import records
from fourm.errors import UsageError
from tokenizers_vq import text

DEFAULT_VOCAB_SIZE = 30_000  # the reference vocabulary's size (modalities.TEXT_VOCAB)


def reserved_tokens() -> list[AddedToken]:
  """The reference's added tokens before its class names, with the same flags."""
  control = [AddedToken(t, single_word=False, normalized=False, special=True)
             for t in (text.PAD, text.UNK, text.SOS, text.EOS)]
  # single_word: "[S_1]" or "v0=12" glued to a word ("a[S_1]") stays text.
  sentinels = [AddedToken(text.sentinel_token(i), single_word=True, normalized=False,
                          special=True) for i in range(text.NUM_SENTINELS)]
  coords = [AddedToken(text.coord_token(axis, value), single_word=True, normalized=False,
                       special=True)
            for axis in range(text.NUM_COORDS) for value in range(text.COORD_BINS)]
  return control + sentinels + coords


def normalize_class_name(name: str) -> str:
  """The form in which the tokenizer sees a class name (lowercased, single spaces)."""
  normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
  return " ".join(normalizer.normalize_str(name).split())


def class_tokens(names: Iterable[str]) -> list[AddedToken]:
  """Class names as single tokens (normalized=True: matched after lowercasing)."""
  reserved = {token.content for token in reserved_tokens()}
  unique = sorted({normalize_class_name(name) for name in names} - {""} - reserved)
  return [AddedToken(name, single_word=True, normalized=True, special=True)
          for name in unique]


def new_tokenizer() -> tokenizers.Tokenizer:
  """An untrained tokenizer with the reference's pipeline."""
  tokenizer = tokenizers.Tokenizer(models.WordPiece(unk_token=text.UNK))
  tokenizer.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = decoders.WordPiece(prefix="##")
  return tokenizer


def read_corpus(data_dirs: Sequence[str], split: str = "train", progress: bool = True
                ) -> tuple[list[str], set[str]]:
  """(captions, class names) of a split of each dataset directory.

  Each directory is a dataset of its own (their captions are pooled). One without a
  single non-empty caption in the split raises a UsageError naming it.
  """
  captions: list[str] = []
  classes: set[str] = set()
  for directory in data_dirs:
    source = records.RecordSource(directory, split)
    classes.update(str(name) for name in source.info.metadata.get("classes", ()))
    # Texts are what people wrote (TEXT values); boxes add their class names.
    texts = [raw.name for raw in modalities.raws_with(modalities.Values.TEXT)
             if raw.name in source.modalities]
    boxes = [raw.name for raw in modalities.raws_with(modalities.Values.BOXES)
             if raw.name in source.modalities]
    if not texts or len(source) == 0:
      raise UsageError(f"{directory}: split {split!r} has no captions to train a text "
                       f"tokenizer on ({len(source)} records, modalities "
                       f"{source.modalities})")
    # Read only these, and without requiring them: records without a caption (an
    # ingested image nobody described) are fine. Passing `modalities=` would require
    # them in every record.
    source.modalities = texts + boxes
    found = 0
    for sample in tqdm(source, total=len(source), unit="record", disable=not progress,
                       desc=f"captions of {os.path.basename(os.path.normpath(directory))}"):
      for name in texts:
        text = sample.get(name)
        if isinstance(text, str) and text.strip():
          captions.append(text)
          found += 1
      for name in boxes:
        if name in sample:
          classes.update(sample[name]["classes"])
    if not found:
      raise UsageError(f"{directory}: split {split!r} has {len(source)} records but no "
                       "non-empty caption to train a text tokenizer on")
  return captions, classes


def train_text_tokenizer(data_dirs: str | Sequence[str], out_path: str,
                         vocab_size: int = DEFAULT_VOCAB_SIZE, split: str = "train",
                         progress: bool = True,
                         log: Callable[[str], None] = print) -> str:
  """Trains on the captions of `data_dirs` and writes the tokenizer JSON to `out_path`.

  `vocab_size` counts every token, the 4,204 reserved ones and the class names
  included; the trainer may stop short of it on a small corpus, and always keeps
  every character it has seen, which can take it slightly past. Returns `out_path`.
  """
  data_dirs = [data_dirs] if isinstance(data_dirs, (str, os.PathLike)) else list(data_dirs)
  if not data_dirs:
    raise UsageError("train-text needs at least one --data directory")
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
    raise UsageError(f"--vocab-size must be an int, got {vocab_size!r}")
  captions, class_names = read_corpus([str(d) for d in data_dirs], split, progress)
  special = reserved_tokens() + class_tokens(class_names)
  if vocab_size <= len(special):
    raise UsageError(f"--vocab-size {vocab_size} leaves no room for words: the special "
                     f"tokens and {len(special) - len(reserved_tokens())} class names "
                     f"already take {len(special)} ids")

  tokenizer = new_tokenizer()
  trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=0,
                                      show_progress=progress, special_tokens=special,
                                      continuing_subword_prefix="##")
  tokenizer.train_from_iterator(captions, trainer=trainer, length=len(captions))

  out_dir = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(out_dir, exist_ok=True)
  tmp_path = out_path + ".tmp"
  tokenizer.save(tmp_path, pretty=True)
  os.replace(tmp_path, out_path)
  # A tokenizer cached under this path by an earlier run is stale now.
  text.load_text_tokenizer.cache_clear()
  text.special_tokens.cache_clear()
  _check_layout(out_path)
  size = tokenizer.get_vocab_size()
  log(f"wrote {out_path}: {size} tokens ({len(captions)} captions of split {split!r} "
      f"from {', '.join(map(str, data_dirs))}; {len(special) - len(reserved_tokens())} "
      f"class names as single tokens"
      f"{'; the corpus has fewer word pieces than asked' if size < vocab_size else ''})")
  return out_path


def _check_layout(path: str) -> None:
  """The written file has the reference ids for every reserved token (else a bug)."""
  got = text.special_tokens(path)
  want = (0, 1, 2, 3, 4, text.NUM_SENTINELS, text.COORD_BINS)
  have = (got.pad, got.unk, got.sos, got.eos, got.first_sentinel, got.num_sentinels,
          got.coord_bins)
  first_coord = tuple(4 + text.NUM_SENTINELS + k * text.COORD_BINS
                      for k in range(text.NUM_COORDS))
  if have != want or got.first_coord != first_coord:
    raise RuntimeError(f"{path}: the trained vocabulary's special ids {got} differ from "
                       "the reference layout")


# The CLI: `fourm tokenizer train-text` ------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--data", nargs="+", required=True,
                      help="dataset directories whose captions to train on (pooled)")
  parser.add_argument("--out", required=True, help="tokenizer JSON file to write")
  parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                      help="tokens in all, special ones included (default: %(default)s)")
  parser.add_argument("--split", default="train")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> None:
  train_text_tokenizer(args.data, args.out, vocab_size=args.vocab_size, split=args.split,
                       progress=not args.quiet)
