"""Retrieval: the CLIP bi-encoder (tiny, random), the faiss memory bank, the neighbour
table, the selection rules, query dropout, the resumable `fourm index build` and its
errors, recall@k."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from fourm import cli
from fourm.data import world
from fourm.errors import RecordError, UsageError
from fourm.retrieval import build, documents, index, neighbours, query_dropout, recall, selection
from fourm.retrieval.retriever import Retriever
from tests.helpers import write_dataset

pytest.importorskip("torch")
pytest.importorskip("transformers")
from fourm.retrieval import encoders  # noqa: E402

NUM_SCENES = 24  # 22 train + 2 val
CHUNK = 8        # 22 train records: three chunks


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("retrieval") / "world")
  world.write_world(out, NUM_SCENES, resolution=64, val_fraction=2 / NUM_SCENES, workers=1,
                    progress=False, log=lambda _: None)
  return out


@pytest.fixture(scope="module")
def encoder():
  return encoders.ClipDocumentEncoder.tiny(seed=0)


@pytest.fixture(scope="module")
def train_records(world_dir):
  from fourm.data import records
  source = records.RecordSource(world_dir, "train")
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def built(world_dir, tmp_path_factory, encoder):
  """A one-shot build of the train split (the reference for the resumed one)."""
  out = str(tmp_path_factory.mktemp("retrieval") / "index")
  bank = build.build_index(world_dir, out, build.BuildOptions(encoder=encoders.TINY),
                           chunk_size=CHUNK, encoder=encoder, progress=False,
                           log=lambda _: None)
  return out, bank


def _bank(vectors, present=None, kind="flat"):
  vectors = documents.normalize(vectors)
  count, dimension = vectors.shape
  present = np.ones((count, len(documents.PARTS)), bool) if present is None else present
  manifest = index.Manifest(encoder="test", dimension=dimension, data=("/nowhere",),
                            split="train", count=count, parts=documents.PARTS, faiss=kind)
  return index.MemoryBank(manifest, vectors, [f"k{i}" for i in range(count)], present)


# ---- import and encoders ----------------------------------------------------------

def test_import_needs_no_torch():
  code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
          "import fourm.retrieval, fourm.retrieval.index, fourm.retrieval.retriever, "
          "fourm.retrieval.build, fourm.retrieval.recall, fourm.retrieval.cli\n"
          "from fourm.retrieval import encoders\n"
          "try:\n  encoders.ClipDocumentEncoder.tiny()\nexcept Exception as e:\n"
          "  print(type(e).__name__, e)\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == 0, result.stderr
  assert "UsageError" in result.stdout and "fourm[pseudolabel]" in result.stdout


def test_vectors_are_unit_and_a_document_is_the_mean_of_its_parts(encoder, train_records):
  samples = train_records[:5]
  images = encoder.encode_images([s["rgb"] for s in samples])
  texts = encoder.encode_texts([s["caption"] for s in samples])
  assert images.shape == texts.shape == (5, encoders.TINY_PROJECTION_DIM)
  np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
  docs, present = encoder.encode_documents(samples)
  assert present.all()
  mean = (images + texts) / 2
  np.testing.assert_allclose(docs, mean / np.linalg.norm(mean, axis=1, keepdims=True),
                             atol=1e-5)
  # A query of some parts only: its vector is that part's.
  caption_only, present = encoder.encode_documents([{"caption": samples[0]["caption"]}])
  assert present.tolist() == [[False, True]]
  np.testing.assert_allclose(caption_only[0], texts[0], atol=1e-5)
  image_only, _ = encoder.encode_documents([{"rgb": samples[1]["rgb"]}])
  np.testing.assert_allclose(image_only[0], images[1], atol=1e-5)


def test_document_vectors_average_only_the_present_parts():
  parts = np.array([[[3, 0], [0, 2]], [[0, 5], [9, 9]]], np.float32)  # [N=2, P=2, D=2]
  present = np.array([[True, True], [True, False]])
  docs = documents.document_vectors(parts, present)
  np.testing.assert_allclose(docs, [[np.sqrt(0.5), np.sqrt(0.5)], [0, 1]], atol=1e-6)
  with pytest.raises(ValueError):
    documents.document_vectors(parts, np.zeros((2, 2), bool))


def test_tiny_encoder_is_a_function_of_its_seed(encoder, train_records):
  again = encoders.ClipDocumentEncoder.tiny(seed=0).encode_documents(train_records[:3])[0]
  other = encoders.ClipDocumentEncoder.tiny(seed=1).encode_documents(train_records[:3])[0]
  np.testing.assert_array_equal(again, encoder.encode_documents(train_records[:3])[0])
  assert not np.allclose(other, again)


def test_an_unloadable_encoder_is_one_clear_error(tmp_path):
  with pytest.raises(UsageError, match="cannot load the CLIP model"):
    encoders.ClipDocumentEncoder.from_pretrained(str(tmp_path))


# ---- the faiss bank and the neighbour table ---------------------------------------

def test_faiss_search_is_the_brute_force_argsort_of_inner_products():
  rng = np.random.default_rng(0)
  bank = _bank(rng.normal(size=(500, 16)))
  queries = documents.normalize(rng.normal(size=(20, 16)))
  scores, rows = bank.search(queries, 10)
  products = queries @ np.asarray(bank.vectors).T
  np.testing.assert_array_equal(rows, np.argsort(-products, axis=1)[:, :10])
  np.testing.assert_allclose(scores, np.sort(products, axis=1)[:, ::-1][:, :10], atol=1e-5)
  # Asking for more than the bank holds pads with -1 and -inf.
  small = _bank(rng.normal(size=(3, 16)))
  scores, rows = small.search(queries[:2], 5)
  assert (rows[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
  with pytest.raises(UsageError, match="dimension"):
    bank.search(np.ones((1, 8), np.float32), 3)


def test_hnsw_finds_nearly_what_the_exact_search_finds():
  rng = np.random.default_rng(1)
  vectors = rng.normal(size=(2000, 16))
  queries = documents.normalize(rng.normal(size=(50, 16)))
  exact = _bank(vectors).search(queries, 10)[1]
  approximate = _bank(vectors, kind="hnsw").search(queries, 10)[1]
  overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approximate)])
  assert overlap > 0.9


def test_neighbour_table_is_the_search_without_the_record_itself():
  rng = np.random.default_rng(2)
  bank = _bank(rng.normal(size=(40, 8)))
  vectors = np.asarray(bank.vectors)
  shuffled = documents.normalize(vectors + rng.normal(size=vectors.shape))
  queries = np.stack([vectors, shuffled], axis=1)  # variant 1: some other query
  table = neighbours.compute_neighbours(bank.search, [queries[:15], queries[15:]], 40, 5,
                                        batch_size=7)
  assert table.rows.shape == (40, 2, 5)
  for row in range(40):
    for variant in range(2):
      products = queries[row, variant] @ vectors.T
      expected = [r for r in np.argsort(-products) if r != row][:5]
      assert table.rows[row, variant].tolist() == expected
      np.testing.assert_allclose(table.scores[row, variant], products[expected], atol=1e-5)


# ---- selection rules and query dropout --------------------------------------------

def test_selection_skips_self_duplicates_missing_parts_and_near_copies():
  # Row vectors: 0 the query's own record, 1 a copy of the query, 2 and 3 near-identical
  # documents, 4 without an image, 5 and 6 ordinary documents.
  v = np.eye(8, dtype=np.float32)[:7]
  v[3] = documents.normalize(v[2] + 0.05 * np.eye(8)[7])
  present = np.ones((7, 2), bool)
  present[4] = [False, True]
  rows, scores = [0, 1, 2, 3, 4, 5, 6], [1.0, 0.97, 0.9, 0.89, 0.8, 0.7, 0.6]
  rules = selection.SelectionRules(required_parts=("rgb",))
  picked = selection.select(rows, scores, 3, present=present, vectors=v, rules=rules,
                            exclude=(0,))
  assert picked == [2, 5, 6]
  # Without the modality rule the caption-only document comes back; without vectors
  # the near copy does.
  assert selection.select(rows, scores, 3, present=present, vectors=v,
                          exclude=(0,)) == [2, 4, 5]
  assert selection.select(rows, scores, 2, present=present, exclude=(0,)) == [2, 3]
  # Too few candidates left: fewer documents, never a rule broken.
  assert selection.select(rows[:3], scores[:3], 3, present=present, vectors=v,
                          exclude=(0,)) == [2]


def test_query_dropout_is_seeded_and_drops_about_its_rate():
  text = " ".join(f"w{i}" for i in range(1000))
  first = query_dropout.drop_words(text, np.random.default_rng(5))
  assert first == query_dropout.drop_words(text, np.random.default_rng(5))
  assert first != query_dropout.drop_words(text, np.random.default_rng(6))
  assert 0.15 < 1 - len(first.split()) / 1000 < 0.25
  assert query_dropout.drop_words("one", np.random.default_rng(0), rate=0.99) == "one"
  image = np.full((64, 64, 3), 255, np.uint8)
  dropped = query_dropout.drop_patches(image, 4, np.random.default_rng(0), rate=0.5)
  cells = dropped.reshape(4, 16, 4, 16, 3)[:, 0, :, 0, 0]  # one pixel per cell
  assert 0 < (cells != 255).sum() < 16 and (image == 255).all()
  assert (query_dropout.drop_patches(image, 4, np.random.default_rng(0), rate=1.0)
          == 255).any()  # a cell always survives


# ---- build, resume, reload --------------------------------------------------------

def test_killed_build_resumes_and_equals_a_one_shot_build(world_dir, built, encoder,
                                                          tmp_path):
  reference_dir, reference = built
  out = str(tmp_path / "index")
  options = build.BuildOptions(encoder=encoders.TINY)
  messages = []
  stopped = build.build_index(world_dir, out, options, chunk_size=CHUNK, encoder=encoder,
                              progress=False, max_chunks=1, log=messages.append)
  assert stopped is None and "resume" in messages[-1]
  with pytest.raises(UsageError, match="interrupted"):
    index.MemoryBank.load(out)
  # A kill while a chunk was being written leaves its temporary file: it is ignored.
  with open(os.path.join(out, index.CHUNKS, "chunk-000001.npz.tmp"), "wb") as f:
    f.write(b"half a chunk")
  resumed = build.build_index(world_dir, out, options, chunk_size=CHUNK,
                              encoder=encoders.ClipDocumentEncoder.tiny(0), progress=False,
                              log=messages.append)
  np.testing.assert_array_equal(resumed.vectors, reference.vectors)
  assert resumed.keys == reference.keys == [f"train/{i:06d}" for i in range(22)]
  np.testing.assert_array_equal(resumed.neighbours.rows, reference.neighbours.rows)
  assert not os.path.exists(os.path.join(out, index.CHUNKS))


def test_a_finished_index_is_loaded_not_rebuilt(world_dir, built, monkeypatch):
  out, bank = built

  def no_encoder(*args, **kwargs):
    raise AssertionError("a finished index must not load an encoder")
  monkeypatch.setattr(encoders.ClipDocumentEncoder, "from_pretrained", no_encoder)
  messages = []
  again = build.build_index(world_dir, out, build.BuildOptions(encoder=encoders.TINY),
                            chunk_size=CHUNK, progress=False, log=messages.append)
  assert "nothing to do" in messages[-1]
  np.testing.assert_array_equal(again.vectors, bank.vectors)
  with pytest.raises(UsageError, match="already holds an index"):
    build.build_index(world_dir, out, build.BuildOptions(encoder=encoders.TINY, neighbours=4),
                      progress=False, log=messages.append)


def test_the_index_survives_a_restart(built, train_records):
  out, bank = built
  loaded = index.MemoryBank.load(out)
  assert loaded.manifest == bank.manifest and loaded.keys == bank.keys
  assert loaded.manifest.count == 22 and loaded.manifest.dimension == 32
  np.testing.assert_array_equal(loaded.vectors, bank.vectors)
  np.testing.assert_array_equal(loaded.present, bank.present)
  queries = np.asarray(bank.vectors[:4])
  for got, want in zip(loaded.search(queries, 5), bank.search(queries, 5)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(loaded.neighbours.rows, bank.neighbours.rows)
  # Every record's nearest document is itself; the table leaves it out.
  assert (loaded.search(queries, 1)[1][:, 0] == np.arange(4)).all()
  assert not (np.asarray(loaded.neighbours.rows) == np.arange(22)[:, None, None]).any()
  assert loaded.records()[loaded.row_of("train/000007")]["caption"] == \
      train_records[7]["caption"]


def test_a_bank_travels_to_data_loader_workers_by_pickle(built):
  out, _ = built
  retriever = Retriever.load(out)
  copy = pickle.loads(pickle.dumps(retriever))
  assert copy.bank._index is None  # re-opened memory-mapped; faiss read on first search
  sample = {"key": "train/000003"}
  assert copy.retrieve(sample, 3) == retriever.retrieve(sample, 3)
  in_memory = _bank(np.random.default_rng(3).normal(size=(30, 8)))
  moved = pickle.loads(pickle.dumps(in_memory))
  query = np.asarray(in_memory.vectors[:2])
  np.testing.assert_array_equal(moved.search(query, 4)[1], in_memory.search(query, 4)[1])


# ---- the retriever ----------------------------------------------------------------

def test_training_retrieval_reads_the_table_and_never_returns_the_query(built,
                                                                        train_records):
  out, _ = built
  retriever = Retriever.load(out, encoder=None,
                             rules=selection.SelectionRules(duplicate_threshold=1.01,
                                                            diversity_threshold=1.01))
  sample = train_records[3]
  keys = retriever.retrieve(sample, 4, np.random.default_rng(0))
  assert len(keys) == 4 and sample["key"] not in keys
  assert keys == retriever.retrieve(sample, 4, np.random.default_rng(0))
  # Without an rng: the whole query's neighbours, best first.
  table = retriever.bank.neighbours
  assert retriever.retrieve(sample, 3) == [retriever.bank.keys[r] for r in table.rows[3, 0, :3]]
  # With an rng, one of the query-dropout rows (variants 1 and 2), each drawn sometimes.
  dropout_rows = {tuple(retriever.bank.keys[r] for r in table.rows[3, v, :4]) for v in (1, 2)}
  drawn = {tuple(retriever.retrieve(sample, 4, np.random.default_rng(s))) for s in range(20)}
  assert drawn == dropout_rows and len(drawn) == 2
  documents_ = retriever.documents(keys)
  assert [d["key"] for d in documents_] == keys
  with pytest.raises(UsageError, match="encoder"):
    retriever.retrieve({"caption": "a red cube"}, 2)


def test_generation_retrieval_encodes_the_query(built, encoder, train_records):
  out, _ = built
  retriever = Retriever.load(out, encoder=encoder,
                             rules=selection.SelectionRules(duplicate_threshold=1.01,
                                                            diversity_threshold=1.01))
  caption = train_records[5]["caption"]
  vector, _ = encoder.encode_documents([{"caption": caption}])
  rows = retriever.bank.search(vector, 3)[1][0]
  assert retriever.retrieve({"caption": caption}, 3) == [retriever.bank.keys[r] for r in rows]
  dropped = retriever.retrieve({"caption": caption}, 3, np.random.default_rng(1))
  assert dropped == retriever.retrieve({"caption": caption}, 3, np.random.default_rng(1))
  with pytest.raises(UsageError, match="query needs"):
    retriever.retrieve({"depth": np.zeros((4, 4))}, 3)


def test_recall_at_k(built, encoder, train_records):
  _, bank = built
  found = recall.recall_at_k(bank, encoder, train_records, (1, 5, 22))
  assert found[1] <= found[5] <= found[22] == 1.0
  with pytest.raises(UsageError, match="not in the index"):
    recall.recall_at_k(bank, encoder, [{"key": "val/000000", "caption": "x"}], 1)


# ---- the command line and its errors -----------------------------------------------

def test_cli_builds_and_searches(world_dir, tmp_path, capsys):
  out = str(tmp_path / "index")
  assert cli.main(["index", "build", "--data", world_dir, "--out", out, "--tiny", "--quiet",
                   "--chunk-size", str(CHUNK), "--neighbours", "8"]) == 0
  printed = capsys.readouterr().out
  assert "indexed 22 documents" in printed and "rgb+caption 22" in printed
  assert "recall" in printed and "@10" in printed
  assert index.read_manifest(out).neighbours == 8
  assert cli.main(["index", "search", "--index", out, "--text", "a large red cube", "-k",
                   "3", "--captions"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4 and all(" train/0000" in line for line in lines[1:])


def test_a_dataset_without_documents_is_one_clear_error(tmp_path, capsys):
  data = str(tmp_path / "depth_only")
  depth = {"depth": np.ones((8, 8), np.float32)}
  write_dataset(data, {"train": [dict(depth, key=f"d{i}") for i in range(3)]})
  assert cli.main(["index", "build", "--data", data, "--out", str(tmp_path / "i"),
                   "--tiny", "--quiet"]) == 2
  err = capsys.readouterr().err
  assert data in err and "'rgb'" in err and "none of the document parts" in err


def test_a_record_without_any_part_is_named(tmp_path):
  data = str(tmp_path / "holes")
  samples = [{"caption": "a red cube.", "key": "a"}, {"depth": np.ones((4, 4), np.float32),
                                                      "key": "b"}]
  write_dataset(data, {"train": samples})
  with pytest.raises(RecordError, match="record 1.*none of the document parts"):
    build.build_index(data, str(tmp_path / "i"), build.BuildOptions(encoder=encoders.TINY),
                      progress=False, log=lambda _: None)


def test_images_without_captions_are_indexed_but_not_asked_for_captions(tmp_path, capsys):
  data = str(tmp_path / "images")
  write_dataset(data, {"train": [{"rgb": np.full((8, 8, 3), 40 * i, np.uint8), "key": f"x{i}"}
                                 for i in range(3)]})
  assert cli.main(["index", "build", "--data", data, "--out", str(tmp_path / "i"), "--tiny",
                   "--quiet"]) == 0
  printed = capsys.readouterr().out
  assert "rgb 3" in printed and "for its image alone" in printed
  assert cli.main(["index", "build", "--data", data, "--out", str(tmp_path / "j"), "--tiny",
                   "--parts", "caption", "--quiet"]) == 2
  assert "'caption'" in capsys.readouterr().err


def test_a_bad_index_directory_is_one_clear_error(tmp_path, capsys):
  assert cli.main(["index", "search", "--index", str(tmp_path / "none"), "--text", "x"]) == 2
  assert "no such index directory" in capsys.readouterr().err
  with pytest.raises(UsageError, match="not a finished index"):
    index.MemoryBank.load(str(tmp_path))
  (tmp_path / index.MANIFEST).write_text('{"format": "something else"}')
  with pytest.raises(UsageError, match="not a fourm-memory-bank manifest"):
    index.MemoryBank.load(str(tmp_path))
