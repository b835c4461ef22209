#!/usr/bin/env python3
"""Writes the same small corpus in the outside token formats minipuzzle reads (the reference for
tests/data/test_data_input.cpp):

  OUT/corpus.txt            the first paragraphs of tinyshakespeare (the source of everything below)
  OUT/mg_<dtype>.bin/.idx   Megatron-LM indexed datasets, one per dtype code of the format (1 uint8 .. 8 uint16):
                            one document per paragraph, its UTF-8 bytes as ids, each document cut into
                            sequences of at most 50 ids (so sequences and documents differ)
  OUT/mg_eos_<dtype>.*      the same with id 256 (<eos>) closing every document, for the dtypes that hold 256
  OUT/mg_modes.*            uint16 with the multimodal per-sequence modes appended to the index
  OUT/mg_mod97.*            uint16, ids = byte % 97 (fits the 97-id tiny reference model), one sequence per document
  OUT/npy_<descr>.npy       all ids of corpus.txt concatenated (numpy.save), in several integer dtypes and byte orders
  OUT/expected.json         paragraph count and token count, for the test's sanity checks

The Megatron writer here is independent of Megatron-LM (megatron-core is not installed in the test environment: it
would add a large dependency for one file format). It follows the layout of megatron/core/datasets/
indexed_dataset.py (_IndexWriter / IndexedDatasetBuilder): .idx = b"MMIDIDX\\x00\\x00", <Q version 1, <B dtype
code, <Q sequence count, <Q document-index count, int32 sequence lengths, int64 sequence byte pointers,
int64 document indices ([0, ..., sequence count]), optional int8 modes; .bin = the ids of every sequence in
order, in the dtype. The paragraph rule is the one documented for `minipuzzle data` (runs of non-blank lines).
"""
import argparse
import json
import os
import struct

import numpy as np

DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


def paragraphs(data):
    docs, current, pos = [], [], 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        if all(c in b" \t\r\n" for c in line):
            if current:
                docs.append(b"".join(current))
                current = []
        else:
            current.append(line)
        pos = end
    if current:
        docs.append(b"".join(current))
    return docs


def write_megatron(prefix, documents, code, max_seq=50, modes=False):
    dtype = DTYPES[code]
    item = np.dtype(dtype).itemsize
    lengths, doc_index = [], [0]
    with open(prefix + ".bin", "wb") as f:
        for doc in documents:
            for s in range(0, max(len(doc), 1), max_seq):
                seq = np.asarray(doc[s:s + max_seq], dtype=dtype)
                f.write(seq.tobytes(order="C"))
                lengths.append(len(seq))
            doc_index.append(len(lengths))
    pointers = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64) * item)[:-1]]).astype(np.int64)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(doc_index)))
        f.write(np.asarray(lengths, dtype="<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.asarray(doc_index, dtype="<i8").tobytes())
        if modes:
            f.write(np.zeros(len(lengths), dtype=np.int8).tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="tinyshakespeare.txt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--paragraphs", type=int, default=120)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    docs = paragraphs(open(a.data, "rb").read())[: a.paragraphs]
    corpus = b"\n".join(docs)  # blank-line separated again: the same paragraphs for `minipuzzle data`
    open(os.path.join(a.out, "corpus.txt"), "wb").write(corpus)
    assert paragraphs(corpus) == docs
    ids = [list(d) for d in docs]
    assert max(max(d) for d in ids) < 128, "the corpus slice is ASCII, so int8 holds every id"
    for code in DTYPES:
        write_megatron(os.path.join(a.out, f"mg_{code}"), ids, code)
        if code not in (1, 2):  # uint8 and int8 cannot hold id 256
            write_megatron(os.path.join(a.out, f"mg_eos_{code}"), [d + [256] for d in ids], code)
    write_megatron(os.path.join(a.out, "mg_modes"), ids, 8, modes=True)
    write_megatron(os.path.join(a.out, "mg_mod97"), [[t % 97 for t in d] for d in ids], 8, max_seq=1 << 30)
    flat = np.asarray([t for d in ids for t in d], dtype=np.int64)
    for descr in ("|u1", "<u2", ">u2", "<i4", ">i4", "<u4", "<i8", "<u8"):
        name = descr.replace("<", "le").replace(">", "be").replace("|", "")
        np.save(os.path.join(a.out, f"npy_{name}.npy"), flat.astype(np.dtype(descr)))
    json.dump({"documents": len(docs), "tokens": int(len(flat))}, open(os.path.join(a.out, "expected.json"), "w"))


if __name__ == "__main__":
    main()
