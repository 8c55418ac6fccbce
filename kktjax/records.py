"""The pair dataset on disk: a versioned ArrayRecord schema, atomic shards and a ledger (SPEC §6).

Layout of a dataset directory (one directory per dataset, written by one generator process):

  ledger.jsonl                      one line per finished batch of runs (the commit record)
  runs.jsonl                        one line per run: seeds, hyperparameters, statistics (RunLog)
  pairs-00000000.array_record       one shard per batch of runs, written atomically
  .pairs-00000001.array_record.tmp-*  a shard being written (never read)

Shard file (ArrayRecord, `group_size:1` for random access). ArrayRecord writer options cannot
carry user metadata, so every file is self-describing through two leading records:

  record 0  header: MAGIC + UTF-8 JSON {"format", "schema_version", "record_nbytes", "fields",
            "num_records", "data_start", "batch_id", "run_ids", "meta"}
  record 1  index: INDEX_DTYPE bytes (cifar_index, run_id) of every pair, in record order; lets
            `per_image_counts` and the balanced stream read z_j without decoding images
  record 2+ pairs: one fixed-layout RECORD_DTYPE record each (a packed little-endian NumPy
            structured dtype, `tobytes`), whose first field is the schema version again

Exactly-once commit protocol (`PairWriter.write_batch`):
  1. append the batch's run entries to runs.jsonl (fsync);
  2. write the shard to a hidden temp file, close, fsync it, `os.replace` it to its final name,
     fsync the directory;
  3. append the ledger line (fsync). The batch is finished iff its ledger line is complete.
A kill before 3 leaves an orphan shard (and possibly run entries) that readers ignore, because
they list shards through the ledger only; the redo overwrites the shard and re-appends the run
entries (RunLog.read keeps the last entry per run_id). A kill during any append leaves a torn last
line, which readers skip and the next append truncates.
"""
from __future__ import annotations

import json
import os
import resource
import time
import uuid
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from array_record.python import array_record_data_source
from array_record.python import array_record_module

# Bump on any change of RECORD_DTYPE, INDEX_DTYPE or the header layout.
SCHEMA_VERSION = 1
FORMAT_NAME = "kktjax.pairs"
MAGIC = b"KKTJAX-PAIRS\n"
IMAGE_SHAPE = (32, 32, 3)
NUM_AUG_LABELS = 9
NUM_CIFAR_TRAIN = 50000
DATA_START = 2   # records 0 and 1 are the header and the index
WRITER_OPTIONS = "group_size:1,zstd:3"   # group_size 1: grain's random access reads one chunk
READER_OPTIONS = {"max_parallelism": "0"}   # the data source already sets readahead 0
LEDGER_NAME = "ledger.jsonl"
RUN_LOG_NAME = "runs.jsonl"
SHARD_PATTERN = "pairs-{batch_id:08d}.array_record"

# (name, little-endian dtype, shape) in SPEC §6 order.
PAIR_FIELDS = (
    ("noisy", "<f2", IMAGE_SHAPE),
    ("clean", "<f2", IMAGE_SHAPE),
    ("cifar_index", "<i4", ()),
    ("aug_labels", "<f4", (NUM_AUG_LABELS,)),
    ("run_id", "<i8", ()),
    ("candidate", "<i2", ()),
    ("label", "i1", ()),
    ("snapshot_iter", "<i4", ()),
    ("ssim", "<f4", ()),
    ("match_ssim", "<f4", ()),
    ("margin", "<f4", ()),
    ("scale_r", "<f4", ()),
    ("phase", "u1", ()),
    ("seed", "<u4", ()),
)
FIELD_NAMES = tuple(name for name, _, _ in PAIR_FIELDS)
# Packed (align=False), so the byte layout is exactly the field list; 12,366 bytes per record.
RECORD_DTYPE = np.dtype([("schema_version", "<u2")] + [(n, d, s) for n, d, s in PAIR_FIELDS])
INDEX_DTYPE = np.dtype([("cifar_index", "<i4"), ("run_id", "<i8")])


# ------------------------------------------------------------------------------------------
# Record encoding.
# ------------------------------------------------------------------------------------------


def to_structured(pairs: Mapping[str, Any]) -> np.ndarray:
  """Packs a dict of per-field arrays (leading dim n) into a RECORD_DTYPE array [n].

  Floats are cast to the field dtype (images round to float16); integers must fit their field.

  Raises:
    ValueError: a field is missing, has the wrong shape, or an integer is out of range.
  """
  missing = [n for n in FIELD_NAMES if n not in pairs]
  if missing:
    raise ValueError(f"pairs are missing fields {missing}")
  n = np.shape(pairs["cifar_index"])[0] if np.ndim(pairs["cifar_index"]) else None
  if n is None:
    raise ValueError("pairs['cifar_index'] must be an array with a leading batch dimension")
  out = np.zeros(n, RECORD_DTYPE)
  out["schema_version"] = SCHEMA_VERSION
  for name, dtype, shape in PAIR_FIELDS:
    value = np.asarray(pairs[name])
    if value.shape != (n,) + shape:
      raise ValueError(f"pairs[{name!r}] has shape {value.shape}, expected {(n,) + shape}")
    dt = np.dtype(dtype)
    if dt.kind in "iu" and value.size:
      if value.dtype.kind not in "iub":
        raise ValueError(f"pairs[{name!r}] must be integer, got {value.dtype}")
      info = np.iinfo(dt)
      if value.min() < info.min or value.max() > info.max:
        raise ValueError(f"pairs[{name!r}] out of range for {dt.name}: "
                         f"[{value.min()}, {value.max()}]")
    out[name] = value
  return out


def empty_pairs(n: int = 0) -> dict[str, np.ndarray]:
  """A dict of zero-filled per-field arrays [n, ...] in the record dtypes (e.g. no matches)."""
  return from_structured(np.zeros(n, RECORD_DTYPE))


def encode_pairs(pairs: Mapping[str, Any]) -> list[bytes]:
  """Encodes a dict of per-field arrays (leading dim n) as n fixed-layout records."""
  buf = to_structured(pairs).tobytes()
  size = RECORD_DTYPE.itemsize
  return [buf[i:i + size] for i in range(0, len(buf), size)]


def _structured_from_records(records: Sequence[bytes]) -> np.ndarray:
  size = RECORD_DTYPE.itemsize
  bad = [i for i, r in enumerate(records) if len(r) != size]
  if bad:
    raise ValueError(f"record {bad[0]} has {len(records[bad[0]])} bytes, expected {size} "
                     f"(schema version {SCHEMA_VERSION}); wrong schema or not a pair record")
  arr = np.frombuffer(b"".join(records), RECORD_DTYPE)
  versions = np.unique(arr["schema_version"])
  if versions.size and (versions.size > 1 or versions[0] != SCHEMA_VERSION):
    raise ValueError(f"pair records have schema version(s) {versions.tolist()}, this code reads "
                     f"version {SCHEMA_VERSION}")
  return arr


def from_structured(arr: np.ndarray) -> dict[str, np.ndarray]:
  """RECORD_DTYPE array [n] -> dict of contiguous per-field arrays (version field dropped)."""
  return {name: arr[name].copy() for name in FIELD_NAMES}


def decode_pairs(records: Sequence[bytes]) -> dict[str, np.ndarray]:
  """Decodes records into a dict of stacked arrays (images stay float16).

  Raises:
    ValueError: a record has the wrong size or another schema version.
  """
  return from_structured(_structured_from_records(records))


def decode_one(record: bytes) -> dict[str, np.ndarray]:
  """Decodes one record into a dict of per-field arrays (images [32,32,3], scalars 0-d)."""
  arr = _structured_from_records([record])
  return {name: arr[name][0].copy() if arr[name].ndim > 1 else arr[name][0]
          for name in FIELD_NAMES}


# ------------------------------------------------------------------------------------------
# Durable files.
# ------------------------------------------------------------------------------------------


def _fsync_path(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _json_default(obj):
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


json_default = _json_default   # public: `json.dump(..., default=records.json_default)`


def _dumps(obj) -> str:
  return json.dumps(obj, default=_json_default, separators=(",", ":"))


class JsonLines:
  """Append-only JSONL file whose commit point is the line's newline.

  `append` fsyncs every call. A last line without its newline (a kill mid-write) is not
  committed: `read` skips it and the next `append` truncates it first. A corrupt *complete* line
  is an error.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)

  def _truncate_torn_tail(self, f) -> None:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
    # Scan backwards for the last newline; keep everything up to and including it.
    pos, keep = size, 0
    while pos > 0:
      start = max(0, pos - 65536)
      f.seek(start)
      block = f.read(pos - start)
      i = block.rfind(b"\n")
      if i >= 0:
        keep = start + i + 1
        break
      pos = start
    f.truncate(keep)

  def append_many(self, objs: Iterable[Mapping[str, Any]]) -> None:
    """Appends one line per object with a single fsync."""
    data = "".join(_dumps(o) + "\n" for o in objs).encode()
    if not data:
      return
    created = not os.path.exists(self.path)
    with open(self.path, "a+b") as f:
      self._truncate_torn_tail(f)
      f.seek(0, os.SEEK_END)
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    if created:
      _fsync_path(os.path.dirname(os.path.abspath(self.path)))

  def append(self, obj: Mapping[str, Any]) -> None:
    self.append_many([obj])

  def read(self) -> list[dict]:
    """All committed lines, in order; [] when the file does not exist."""
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb") as f:
      data = f.read()
    lines = data.split(b"\n")[:-1]   # the last piece is b"" or a torn line
    out = []
    for i, line in enumerate(lines):
      if not line.strip():
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{self.path}: line {i + 1} is corrupt ({e})") from None
    return out


class Ledger(JsonLines):
  """The commit log of finished batches: one JSON object per line with at least
  {"batch_id": int, "file": str (relative to the directory), "num_records": int,
  "run_ids": [int], "schema_version": int}."""

  def append(self, entry: Mapping[str, Any]) -> None:
    for key in ("batch_id", "file", "num_records", "run_ids"):
      if key not in entry:
        raise ValueError(f"ledger entry is missing {key!r}")
    super().append(entry)

  def latest(self) -> dict[int, dict]:
    """batch_id -> its last committed entry."""
    return {int(e["batch_id"]): e for e in self.read()}

  def finished(self) -> set[int]:
    """The ids of the finished batches."""
    return set(self.latest())

  def finished_runs(self) -> set[int]:
    """The ids of the runs of finished batches."""
    return {int(r) for e in self.latest().values() for r in e["run_ids"]}


class RunLog(JsonLines):
  """Per-run metadata (SPEC §6): seeds, phase, hyperparameters, the 300 CIFAR indices and aug
  labels, the victim's final loss / train error / minimum margin, the numbers of confident
  candidates and conflicts, the diverged flag, timing and code version. Each entry needs
  "run_id"; NumPy values are converted to JSON lists/numbers."""

  def append_many(self, entries: Iterable[Mapping[str, Any]]) -> None:
    entries = list(entries)
    for e in entries:
      if "run_id" not in e:
        raise ValueError("run log entry is missing 'run_id'")
    super().append_many(entries)

  def entries(self, finished_runs: Iterable[int] | None = None) -> list[dict]:
    """The last entry per run_id (a redo re-appends), sorted by run_id.

    Args:
      finished_runs: if given (e.g. `Ledger.finished_runs()`), keep only these runs, dropping
        entries of batches that were killed before their ledger line.
    """
    last = {int(e["run_id"]): e for e in self.read()}
    if finished_runs is not None:
      keep = {int(r) for r in finished_runs}
      last = {k: v for k, v in last.items() if k in keep}
    return [last[k] for k in sorted(last)]


# ------------------------------------------------------------------------------------------
# Shards.
# ------------------------------------------------------------------------------------------


def _header(num_records: int, batch_id: int | None, run_ids: Sequence[int],
            meta: Mapping[str, Any] | None) -> dict:
  return {
      "format": FORMAT_NAME,
      "schema_version": SCHEMA_VERSION,
      "record_nbytes": RECORD_DTYPE.itemsize,
      "fields": [[n, d, list(s)] for n, d, s in PAIR_FIELDS],
      "index_fields": [[n, INDEX_DTYPE[n].str] for n in INDEX_DTYPE.names],
      "num_records": int(num_records),
      "data_start": DATA_START,
      "batch_id": None if batch_id is None else int(batch_id),
      "run_ids": [int(r) for r in run_ids],
      "meta": dict(meta or {}),
  }


def write_run_shard(path: str | os.PathLike, pairs: Mapping[str, Any], *,
                    batch_id: int | None = None, run_ids: Sequence[int] | None = None,
                    meta: Mapping[str, Any] | None = None) -> dict:
  """Writes one shard atomically: temp file, close, fsync, rename, fsync the directory.

  Until the rename nothing exists under `path`; an existing file there (an orphan of a killed
  attempt) is replaced. The caller commits the shard by appending a ledger line afterwards.

  Args:
    path: the final file name, e.g. `dir/pairs-00000012.array_record`.
    pairs: dict of per-field arrays with a leading dim n (n may be 0).
    batch_id: stored in the header.
    run_ids: all runs of the batch, including those without pairs; defaults to the distinct
      run_ids of `pairs`.
    meta: extra JSON-serialisable header data.

  Returns:
    The header dict written as record 0.
  """
  path = os.fspath(path)
  arr = to_structured(pairs)
  if run_ids is None:
    run_ids = np.unique(arr["run_id"]).tolist()
  header = _header(arr.shape[0], batch_id, run_ids, meta)
  index = np.zeros(arr.shape[0], INDEX_DTYPE)
  index["cifar_index"] = arr["cifar_index"]
  index["run_id"] = arr["run_id"]
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    writer.write(MAGIC + _dumps(header).encode())
    writer.write(index.tobytes())
    buf, size = arr.tobytes(), RECORD_DTYPE.itemsize
    for i in range(0, len(buf), size):
      writer.write(buf[i:i + size])
    ok = writer.ok()
    writer.close()
    if not ok:
      raise OSError(f"ArrayRecord writer failed on {tmp}")
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_path(directory)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return header


def _read_raw_meta(path: str, with_index: bool) -> tuple[int, list[bytes]]:
  try:
    reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
    try:
      total = reader.num_records()
      raw = reader.read(list(range(min(total, 2 if with_index else 1))))
    finally:
      reader.close()
  except (RuntimeError, OSError) as e:   # errors of the C++ reader
    raise ValueError(f"{path} is not a readable ArrayRecord file ({e})") from None
  return total, raw


def _read_meta_records(path: str, with_index: bool) -> tuple[dict, np.ndarray | None]:
  total, raw = _read_raw_meta(path, with_index)
  if total < DATA_START:
    raise ValueError(f"{path} is not a kktjax pairs file (only {total} records)")
  if not raw[0].startswith(MAGIC):
    raise ValueError(f"{path} is not a kktjax pairs file (no header record)")
  try:
    header = json.loads(raw[0][len(MAGIC):])
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} has a corrupt header ({e})") from None
  version = header.get("schema_version")
  if version != SCHEMA_VERSION:
    raise ValueError(f"{path} has pair schema version {version}, this code reads version "
                     f"{SCHEMA_VERSION}")
  if header.get("record_nbytes") != RECORD_DTYPE.itemsize:
    raise ValueError(f"{path} has {header.get('record_nbytes')}-byte records, expected "
                     f"{RECORD_DTYPE.itemsize}")
  if total != DATA_START + header["num_records"]:
    raise ValueError(f"{path} holds {total - DATA_START} pairs, its header says "
                     f"{header['num_records']}")
  index = None
  if with_index:
    index = np.frombuffer(raw[1], INDEX_DTYPE)
    if index.shape[0] != header["num_records"]:
      raise ValueError(f"{path} index has {index.shape[0]} entries, expected "
                       f"{header['num_records']}")
  return header, index


def read_header(path: str | os.PathLike) -> dict:
  """Reads and checks a shard's header.

  Raises:
    ValueError: not a pairs file, another SCHEMA_VERSION, or inconsistent record counts.
  """
  return _read_meta_records(os.fspath(path), with_index=False)[0]


def read_index(path: str | os.PathLike) -> np.ndarray:
  """A shard's INDEX_DTYPE array (cifar_index, run_id) [num_records], without decoding pairs."""
  return _read_meta_records(os.fspath(path), with_index=True)[1]


class PairWriter:
  """Writes batches of runs into a dataset directory with the exactly-once protocol."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = os.fspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self.ledger = Ledger(os.path.join(self.directory, LEDGER_NAME))
    self.run_log = RunLog(os.path.join(self.directory, RUN_LOG_NAME))

  def shard_path(self, batch_id: int) -> str:
    return os.path.join(self.directory, SHARD_PATTERN.format(batch_id=batch_id))

  def finished(self) -> set[int]:
    """Finished batch ids (resume skips these)."""
    return self.ledger.finished()

  def finished_runs(self) -> set[int]:
    return self.ledger.finished_runs()

  def write_batch(self, batch_id: int, pairs: Mapping[str, Any], *, run_ids: Sequence[int],
                  run_entries: Sequence[Mapping[str, Any]] = (),
                  meta: Mapping[str, Any] | None = None) -> dict:
    """Commits one batch of runs: run log entries, then the shard, then the ledger line.

    Args:
      batch_id: a non-negative id, unique per batch; a redo of an unfinished batch reuses it.
      pairs: dict of per-field arrays for all pairs of the batch (may be empty).
      run_ids: every run in the batch (runs without confident matches included).
      run_entries: RunLog entries of these runs.
      meta: extra JSON data for the shard header and ledger line.

    Returns:
      The ledger entry.
    """
    if int(batch_id) < 0:
      raise ValueError(f"batch_id must be >= 0, got {batch_id}")
    run_ids = [int(r) for r in run_ids]
    if run_entries:
      self.run_log.append_many(run_entries)
    path = self.shard_path(batch_id)
    header = write_run_shard(path, pairs, batch_id=batch_id, run_ids=run_ids, meta=meta)
    entry = {"batch_id": int(batch_id), "file": os.path.basename(path),
             "num_records": header["num_records"], "run_ids": run_ids,
             "schema_version": SCHEMA_VERSION, "time": time.time(), "meta": dict(meta or {})}
    self.ledger.append(entry)
    return entry


def ledgered_shards(directory: str | os.PathLike) -> list[tuple[str, int]]:
  """(path, num_records) of the committed shards of a dataset directory, by batch_id.

  Files not named by the ledger (orphans, temp files) are not listed.
  """
  directory = os.fspath(directory)
  ledger_path = os.path.join(directory, LEDGER_NAME)
  if not os.path.exists(ledger_path):
    raise ValueError(f"{directory} has no {LEDGER_NAME}; not a pair dataset directory")
  latest = Ledger(ledger_path).latest()
  return [(os.path.join(directory, latest[b]["file"]), int(latest[b]["num_records"]))
          for b in sorted(latest)]


def _raise_fd_limit(num_files: int) -> None:
  # One open reader per shard; lift the soft limit towards the hard one when needed.
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  want = num_files + 256
  if soft != resource.RLIM_INFINITY and soft < want:
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    try:
      resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError):
      pass


# ------------------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------------------


class PairDataSource:
  """Grain-compatible random-access source over pair shards; elements are decoded dicts.

  Keys run over the pairs of all shards in order (directory: ledger order by batch_id), and
  skip each file's two leading meta records.

  Args:
    paths_or_directory: a dataset directory (only its ledgered shards are read), a shard
      file, or a sequence of these (e.g. one directory per generator process), in key order.
    verify: check every file's header (magic, SCHEMA_VERSION, record count) now. Always on for
      explicit files, since their record counts come from the headers.
    reader_options: extra ArrayRecord reader options (the data source always sets
      readahead_buffer_size:0; default adds max_parallelism:0, both for random access).
  """

  def __init__(self, paths_or_directory: str | os.PathLike | Sequence[str | os.PathLike], *,
               verify: bool = True, reader_options: Mapping[str, str] | None = None):
    if isinstance(paths_or_directory, (str, os.PathLike)):
      paths_or_directory = [paths_or_directory]
    files = []
    for p in map(os.fspath, paths_or_directory):
      if os.path.isdir(p):
        shards = ledgered_shards(p)
        if verify:
          for path, n in shards:
            got = read_header(path)["num_records"]
            if got != n:
              raise ValueError(f"{path} holds {got} pairs, the ledger says {n}")
        files += shards
      else:
        files.append((p, read_header(p)["num_records"]))
    self._files = files
    self._counts = np.array([n for _, n in files], np.int64)
    self._index = None
    nonempty = [f"{p}[{DATA_START}:{DATA_START + n}]" for p, n in files if n > 0]
    _raise_fd_limit(len(nonempty))
    self._source = None
    if nonempty:
      self._source = array_record_data_source.ArrayRecordDataSource(
          nonempty, reader_options=dict(reader_options or READER_OPTIONS))

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_index"] = None   # large; re-read on demand rather than pickled into grain workers
    return state

  @property
  def files(self) -> list[tuple[str, int]]:
    """(path, num_records) per shard, in key order."""
    return list(self._files)

  def __len__(self) -> int:
    return int(self._counts.sum())

  def _check_keys(self, keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, np.int64).reshape(-1)
    if keys.size and (keys.min() < 0 or keys.max() >= len(self)):
      raise IndexError(f"record keys out of range [0, {len(self)})")
    return keys

  def read_records(self, keys: Sequence[int]) -> list[bytes]:
    """The raw records of `keys`."""
    keys = self._check_keys(keys)
    if not keys.size:
      return []
    return list(self._source.__getitems__(keys.tolist()))

  def read_batch(self, keys: Sequence[int]) -> dict[str, np.ndarray]:
    """Bulk read and decode: dict of stacked arrays [len(keys), ...]."""
    records = self.read_records(keys)
    if not records:
      return from_structured(np.zeros(0, RECORD_DTYPE))
    return decode_pairs(records)

  def __getitem__(self, key) -> dict[str, np.ndarray]:
    key = int(key)
    if key < 0:
      key += len(self)
    return decode_one(self.read_records([key])[0])

  def __getitems__(self, keys: Sequence[int]) -> list[dict[str, np.ndarray]]:
    batch = self.read_batch(keys)
    return [{k: v[i] for k, v in batch.items()} for i in range(len(keys))]

  def index(self) -> np.ndarray:
    """INDEX_DTYPE (cifar_index, run_id) of every key, from the shards' index records."""
    if self._index is None:
      parts = [read_index(p) for p, n in self._files]
      self._index = np.concatenate(parts) if parts else np.zeros(0, INDEX_DTYPE)
    return self._index

  @property
  def cifar_index(self) -> np.ndarray:
    """int32 [len(self)]: the CIFAR image of every key."""
    return np.ascontiguousarray(self.index()["cifar_index"])

  def __repr__(self) -> str:
    return f"PairDataSource({len(self._files)} shards, {len(self)} pairs)"


def per_image_counts(source: str | os.PathLike | PairDataSource,
                     num_images: int = NUM_CIFAR_TRAIN) -> np.ndarray:
  """z_j: int64 [num_images], the number of records of each CIFAR training image.

  Reads only the shards' index records (committed shards only for a directory).
  """
  if not isinstance(source, PairDataSource):
    source = PairDataSource(source, verify=False)
  cifar_index = source.cifar_index
  if cifar_index.size and (cifar_index.min() < 0 or cifar_index.max() >= num_images):
    raise ValueError(f"cifar_index outside [0, {num_images}): "
                     f"[{cifar_index.min()}, {cifar_index.max()}]")
  return np.bincount(cifar_index, minlength=num_images).astype(np.int64)
