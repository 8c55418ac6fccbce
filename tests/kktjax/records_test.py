"""Tests for kktjax.records: the pair schema, atomic shards, the ledger and PairDataSource."""
import json
import os

import grain
import numpy as np
import pytest
from array_record.python import array_record_module

from kktjax import records

# Independent layout: u2 version, 2 float16 images, then the scalar fields of SPEC §6.
EXPECTED_NBYTES = 2 + 2 * (32 * 32 * 3 * 2) + 4 + 9 * 4 + 8 + 2 + 1 + 4 + 4 * 4 + 1 + 4


def random_pairs(rng, n, cifar_index=None, run_id=0):
  cifar_index = rng.integers(0, 50000, n) if cifar_index is None else np.asarray(cifar_index)
  return {
      "noisy": rng.uniform(0.0, 1.0, (n, 32, 32, 3)),
      "clean": rng.normal(0.5, 0.3, (n, 32, 32, 3)),   # A(I) is unclipped
      "cifar_index": cifar_index,
      "aug_labels": rng.normal(size=(n, 9)),
      "run_id": np.full(n, run_id, np.int64),
      "candidate": rng.integers(0, 400, n),
      "label": rng.choice([-1, 1], n),
      "snapshot_iter": rng.integers(1, 120, n) * 100,
      "ssim": rng.uniform(0, 1, n),
      "match_ssim": rng.uniform(0.4, 1, n),
      "margin": rng.uniform(0.05, 0.5, n),
      "scale_r": rng.uniform(0, 100, n),
      "phase": rng.integers(1, 3, n),
      "seed": rng.integers(0, 2**32, n, dtype=np.uint64),
  }


def check_equal_to_input(decoded, pairs, rows=slice(None)):
  for name, dtype, shape in records.PAIR_FIELDS:
    want = np.asarray(pairs[name])[rows]
    got = decoded[name]
    assert got.dtype == np.dtype(dtype), name
    assert got.shape == want.shape, name
    if name in ("noisy", "clean"):
      # float16 rounding: half an ulp, 2^-11 relative (2^-25 absolute in the subnormal range).
      bound = np.maximum(np.abs(want) * 2.0**-11, 2.0**-25)
      assert np.all(np.abs(got.astype(np.float64) - want) <= bound), name
    elif np.dtype(dtype).kind == "f":
      np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=name)
    else:
      np.testing.assert_array_equal(got.astype(np.int64), want.astype(np.int64), err_msg=name)


# ------------------------------------------------------------------------------------------
# Schema.
# ------------------------------------------------------------------------------------------


def test_record_layout_is_fixed_and_packed():
  assert records.RECORD_DTYPE.itemsize == EXPECTED_NBYTES == 12366
  pairs = random_pairs(np.random.default_rng(0), 2)
  pairs["cifar_index"] = np.array([12345, 49999])
  pairs["seed"] = np.array([7, 2**32 - 1], np.uint64)
  recs = records.encode_pairs(pairs)
  assert len(recs) == 2 and all(isinstance(r, bytes) and len(r) == EXPECTED_NBYTES for r in recs)
  r = recs[1]
  assert int.from_bytes(r[0:2], "little") == records.SCHEMA_VERSION
  off = 2 + 2 * 6144
  assert int.from_bytes(r[off:off + 4], "little", signed=True) == 49999
  assert int.from_bytes(r[-4:], "little") == 2**32 - 1   # seed is the last field
  # The noisy image starts right after the version as little-endian float16.
  np.testing.assert_array_equal(np.frombuffer(r[2:2 + 6144], "<f2").reshape(32, 32, 3),
                                pairs["noisy"][1].astype(np.float16))


def test_round_trip_all_fields():
  rng = np.random.default_rng(1)
  pairs = random_pairs(rng, 17)
  pairs["run_id"] = np.array([2**40 + i for i in range(17)])
  pairs["label"][0] = -1
  recs = records.encode_pairs(pairs)
  decoded = records.decode_pairs(recs)
  assert set(decoded) == set(records.FIELD_NAMES)
  check_equal_to_input(decoded, pairs)
  one = records.decode_one(recs[3])
  assert one["noisy"].shape == (32, 32, 3) and one["aug_labels"].shape == (9,)
  for name in records.FIELD_NAMES:
    np.testing.assert_array_equal(one[name], decoded[name][3])
  # Decoded arrays are writable copies, not views of the record bytes.
  decoded["noisy"][0, 0, 0, 0] = 2.0


def test_encode_rejects_bad_input():
  rng = np.random.default_rng(2)
  pairs = random_pairs(rng, 3)
  with pytest.raises(ValueError, match="missing fields"):
    records.encode_pairs({k: v for k, v in pairs.items() if k != "margin"})
  with pytest.raises(ValueError, match="noisy"):
    records.encode_pairs({**pairs, "noisy": pairs["noisy"][:, :16]})
  with pytest.raises(ValueError, match="candidate"):
    records.encode_pairs({**pairs, "candidate": np.array([0, 1, 40000])})
  with pytest.raises(ValueError, match="label"):
    records.encode_pairs({**pairs, "label": np.array([1.0, -1.0, 1.0])})


def test_decode_rejects_other_version_and_size():
  recs = records.encode_pairs(random_pairs(np.random.default_rng(3), 2))
  other = bytearray(recs[1])
  other[0:2] = (records.SCHEMA_VERSION + 1).to_bytes(2, "little")
  with pytest.raises(ValueError, match="schema version"):
    records.decode_pairs([recs[0], bytes(other)])
  with pytest.raises(ValueError, match="bytes"):
    records.decode_one(recs[0][:-1])


# ------------------------------------------------------------------------------------------
# Shards and files.
# ------------------------------------------------------------------------------------------


def test_shard_is_self_describing(tmp_path):
  pairs = random_pairs(np.random.default_rng(4), 5, run_id=11)
  path = str(tmp_path / "pairs-00000003.array_record")
  records.write_run_shard(path, pairs, batch_id=3, run_ids=[11, 12], meta={"phase": 1})
  reader = array_record_module.ArrayRecordReader(path)
  assert reader.num_records() == 5 + 2
  assert "group_size:1," in reader.writer_options_string()
  raw = reader.read_all()
  reader.close()
  assert raw[0].startswith(records.MAGIC)
  header = json.loads(raw[0][len(records.MAGIC):])
  assert header["schema_version"] == records.SCHEMA_VERSION
  assert header["num_records"] == 5 and header["run_ids"] == [11, 12]
  assert header["meta"] == {"phase": 1} and header["batch_id"] == 3
  index = np.frombuffer(raw[1], records.INDEX_DTYPE)
  np.testing.assert_array_equal(index["cifar_index"], pairs["cifar_index"])
  np.testing.assert_array_equal(index["run_id"], 11)
  check_equal_to_input(records.decode_pairs(raw[2:]), pairs)


def test_file_with_other_schema_version_raises(tmp_path, monkeypatch):
  writer = records.PairWriter(tmp_path)
  pairs = random_pairs(np.random.default_rng(5), 4)
  writer.write_batch(0, pairs, run_ids=[0])
  monkeypatch.setattr(records, "SCHEMA_VERSION", 99)   # a file from another code version
  writer.write_batch(1, pairs, run_ids=[1])
  monkeypatch.undo()
  path = writer.shard_path(1)
  with pytest.raises(ValueError, match=r"schema version 99, this code reads version 1"):
    records.read_header(path)
  with pytest.raises(ValueError, match="schema version 99"):
    records.PairDataSource([path])
  with pytest.raises(ValueError, match="schema version 99"):
    records.PairDataSource(tmp_path)
  with pytest.raises(ValueError, match="schema version 99"):
    records.per_image_counts(tmp_path)


def test_not_a_pairs_file(tmp_path):
  path = str(tmp_path / "other.array_record")
  w = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for b in (b"a", b"b", b"c"):
    w.write(b)
  w.close()
  with pytest.raises(ValueError, match="not a kktjax pairs file"):
    records.read_header(path)
  garbage = tmp_path / "garbage.array_record"
  garbage.write_bytes(b"not an array record")
  with pytest.raises(ValueError, match="not a readable ArrayRecord"):
    records.read_header(garbage)


def test_temp_file_never_visible_and_failed_write_leaves_nothing(tmp_path, monkeypatch):
  writer = records.PairWriter(tmp_path)
  rng = np.random.default_rng(6)
  writer.write_batch(0, random_pairs(rng, 3), run_ids=[0])
  final = writer.shard_path(1)
  seen = []
  real_fsync = records._fsync_path

  def spy_fsync(path):
    # A reader that runs while the shard is still a temp file.
    if ".tmp-" in path:
      seen.append((sorted(os.listdir(tmp_path)), len(records.PairDataSource(tmp_path))))
    real_fsync(path)

  monkeypatch.setattr(records, "_fsync_path", spy_fsync)
  writer.write_batch(1, random_pairs(rng, 4), run_ids=[1])
  (listing, visible), = seen
  assert os.path.basename(final) not in listing
  assert any(n.startswith(".pairs-00000001.array_record.tmp-") for n in listing)
  assert visible == 3
  assert len(records.PairDataSource(tmp_path)) == 7

  def failing_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(records.os, "replace", failing_replace)
  with pytest.raises(OSError, match="disk full"):
    writer.write_batch(2, random_pairs(rng, 5), run_ids=[2])
  monkeypatch.undo()
  assert not os.path.exists(writer.shard_path(2))
  assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
  assert writer.finished() == {0, 1}
  assert len(records.PairDataSource(tmp_path)) == 7


def test_orphans_and_stale_temps_ignored_then_overwritten(tmp_path):
  writer = records.PairWriter(tmp_path)
  rng = np.random.default_rng(7)
  committed = random_pairs(rng, 6, cifar_index=[1, 1, 2, 3, 3, 3])
  writer.write_batch(0, committed, run_ids=[0])
  # Killed between the rename and the ledger append: an orphan shard.
  orphan = random_pairs(rng, 9, cifar_index=np.full(9, 4))
  records.write_run_shard(writer.shard_path(1), orphan, batch_id=1)
  # Killed mid-write: a stale temp file.
  (tmp_path / ".pairs-00000002.array_record.tmp-1-deadbeef").write_bytes(b"partial")
  src = records.PairDataSource(tmp_path)
  assert len(src) == 6 and writer.finished() == {0}
  counts = records.per_image_counts(tmp_path)
  assert counts.shape == (50000,) and counts.dtype == np.int64
  np.testing.assert_array_equal(counts[:6], [0, 2, 1, 3, 0, 0])
  assert counts.sum() == 6
  # The redo overwrites the orphan and commits it.
  redo = random_pairs(rng, 2, cifar_index=[5, 5])
  writer.write_batch(1, redo, run_ids=[1])
  src = records.PairDataSource(tmp_path)
  assert len(src) == 8
  check_equal_to_input(src.read_batch([6, 7]), redo)
  np.testing.assert_array_equal(records.per_image_counts(tmp_path)[:6], [0, 2, 1, 3, 0, 2])


def test_ledger_tolerates_torn_last_line(tmp_path):
  path = tmp_path / records.LEDGER_NAME
  ledger = records.Ledger(path)
  for b in (0, 1):
    ledger.append({"batch_id": b, "file": f"f{b}", "num_records": 1, "run_ids": [10 + b]})
  with open(path, "ab") as f:   # killed mid-append
    f.write(b'{"batch_id": 7, "file": "f7", "num_rec')
  assert ledger.finished() == {0, 1}
  assert ledger.finished_runs() == {10, 11}
  ledger.append({"batch_id": 2, "file": "f2", "num_records": 1, "run_ids": [12]})
  assert ledger.finished() == {0, 1, 2}
  lines = path.read_bytes().split(b"\n")
  assert lines[-1] == b"" and all(json.loads(l) for l in lines[:-1])   # torn line truncated
  # A complete JSON object without its newline is not committed either.
  with open(path, "ab") as f:
    f.write(b'{"batch_id": 8, "file": "f8", "num_records": 1, "run_ids": [18]}')
  assert ledger.finished() == {0, 1, 2}
  with open(path, "ab") as f:
    f.write(b'\n{"batch_id": 9, "fi\n')
  with pytest.raises(ValueError, match="line 5 is corrupt"):
    ledger.finished()
  with pytest.raises(ValueError, match="run_ids"):
    ledger.append({"batch_id": 3, "file": "f3", "num_records": 0})


def test_run_log(tmp_path):
  log = records.RunLog(tmp_path / records.RUN_LOG_NAME)
  idx = np.arange(300, dtype=np.int64)
  labels = np.linspace(0, 1, 300 * 9, dtype=np.float32).reshape(300, 9)
  log.append_many([{"run_id": 1, "cifar_indices": idx, "aug_labels": labels,
                    "final_loss": np.float32(0.25), "diverged": False},
                   {"run_id": 2, "cifar_indices": idx + 1, "final_loss": 0.5}])
  log.append({"run_id": 1, "cifar_indices": idx, "final_loss": 0.125})   # a redo
  with open(log.path, "ab") as f:
    f.write(b'{"run_id": 3, "fin')
  entries = log.entries()
  assert [e["run_id"] for e in entries] == [1, 2]
  assert entries[0]["final_loss"] == 0.125 and entries[0]["cifar_indices"] == idx.tolist()
  first = log.read()[0]
  np.testing.assert_array_equal(np.array(first["aug_labels"], np.float32), labels)
  assert [e["run_id"] for e in log.entries(finished_runs={2})] == [2]
  with pytest.raises(ValueError, match="run_id"):
    log.append({"seed": 1})


def test_pair_data_source_across_shards(tmp_path):
  writer = records.PairWriter(tmp_path)
  rng = np.random.default_rng(8)
  sizes = {3: 5, 0: 7, 1: 0, 2: 4}   # written out of order; one batch without matches
  shards = {}
  for b, n in sizes.items():
    shards[b] = random_pairs(rng, n, run_id=b) if n else records.empty_pairs(0)
    writer.write_batch(b, shards[b], run_ids=[b])
  everything = {k: np.concatenate([np.asarray(shards[b][k]) for b in sorted(shards)])
                for k in records.FIELD_NAMES}
  src = records.PairDataSource(tmp_path)
  assert len(src) == 16
  assert [n for _, n in src.files] == [7, 0, 4, 5]
  for key in range(len(src)):
    check_equal_to_input({k: v[None] for k, v in src[key].items()}, everything,
                         rows=slice(key, key + 1))
  keys = [15, 0, 7, 7, 11, 3]
  check_equal_to_input(src.read_batch(keys), everything, rows=keys)
  items = src.__getitems__(keys)
  np.testing.assert_array_equal([it["run_id"] for it in items], everything["run_id"][keys])
  np.testing.assert_array_equal(src[-1]["clean"], src[15]["clean"])
  with pytest.raises(IndexError):
    src.read_batch([16])
  np.testing.assert_array_equal(src.cifar_index, everything["cifar_index"])
  np.testing.assert_array_equal(src.index()["run_id"], everything["run_id"])
  np.testing.assert_array_equal(records.per_image_counts(src),
                                np.bincount(everything["cifar_index"], minlength=50000))
  # Explicit file lists read the same; grain wraps the source directly.
  by_files = records.PairDataSource([p for p, _ in src.files])
  np.testing.assert_array_equal(by_files[9]["noisy"], src[9]["noisy"])
  two = records.PairDataSource([tmp_path, src.files[2][0]])   # directories and files mixed
  assert len(two) == 20
  np.testing.assert_array_equal(two[17]["noisy"], src[8]["noisy"])   # batch 2, record 1
  ds = grain.MapDataset.source(src)
  assert len(ds) == 16 and ds[4]["cifar_index"] == everything["cifar_index"][4]


def test_directory_without_ledger(tmp_path):
  with pytest.raises(ValueError, match="no ledger.jsonl"):
    records.PairDataSource(tmp_path)
