"""Retrieval augmentation (CM3leon): a memory bank of the dataset's own records, searched
with a CLIP bi-encoder, whose selected documents become extra conditions.

  documents      which parts (image, caption) a record has; a document's vector is the
                 mean of its parts' unit vectors
  encoders       `ClipDocumentEncoder`: CLIP's towers through transformers (torch, loaded
                 only when an encoder is built), tiny and random offline
  index          `MemoryBank`: the vectors in a faiss inner-product index, saved and loaded
  neighbours     `NeighbourTable`: every indexed record's top M, precomputed for training
  build          `build_index`: `fourm index build`, chunked and resumable
  selection      `SelectionRules`, `select`: relevance, modality, diversity
  query_dropout  CM3leon's 20 % query dropout (caption words, image patches)
  retriever      `Retriever.retrieve(query, k, rng) -> keys`, `documents(keys)`
  recall         `recall_at_k`
  cli            the `fourm index` commands

This package reads datasets; it neither trains nor generates. Training and generation
import it to turn retrieved records into conditions.
"""
