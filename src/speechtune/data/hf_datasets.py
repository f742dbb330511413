"""Hugging Face datasets as `prepare` input, opened as arrow batches; audio is never decoded here.

The one module that imports `datasets` and `pyarrow` (the `hf` extra). It finds the splits of a dataset
and hands each over as a Part: its columns, which of them hold audio, and a way to iterate its rows in
arrow batches. An Audio column's storage is `{"bytes", "path"}` whatever the `datasets` version, so
reading it raw (`with_format("arrow")`, or pyarrow on parquet) needs no audio decoder (newer `datasets`
decode through torchcodec, which speechtune does not depend on); speechtune's own decoding (PyAV,
libsndfile) reads the bytes later. Mapping columns to rows is readers.py's job.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpeechtuneError

INSTALL_HINT = "pip install 'speechtune[hf]'"
# Rows per arrow batch: a batch of embedded audio is held in memory at once; 256 clips of Common Voice
# mp3 are about 10 MB.
BATCH_ROWS = 256
DATASET_FILES = ("dataset_info.json", "state.json")   # what Dataset.save_to_disk writes
DATASET_DICT_FILE = "dataset_dict.json"                 # what DatasetDict.save_to_disk writes


@dataclass
class Part:
    """One split (or one file of a split) of a dataset."""
    name: str | None            # the split as the dataset names it (train, validation, other, ...)
    source: str                 # the file, folder or hub id rows come from (rejects.jsonl's `source`)
    base: Path | None           # folder that relative audio paths resolve against
    num_rows: int
    columns: list[str]
    audio_columns: list[str]    # typed Audio, or {"bytes", "path"} structs; best first
    batches: Callable[[], Iterator]  # arrow tables/record batches of at most BATCH_ROWS rows


def require(module: str = "datasets"):
    """Import `datasets` or `pyarrow`, or say how to install them."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SpeechtuneError(f"reading Hugging Face datasets needs the `{module}` package",
                              INSTALL_HINT) from None


def is_dataset_dir(path: Path) -> bool:
    """A folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return (path / DATASET_DICT_FILE).is_file() or all((path / f).is_file() for f in DATASET_FILES)


def has_parquet(path: Path) -> bool:
    """A hub-repo-like folder: parquet files at most three folders down (config/data/split)."""
    return any(next(path.glob("*/" * depth + "*.parquet"), None) for depth in range(4))


def _audio_columns(schema, features: dict | None) -> list[str]:
    """Columns typed Audio (from the datasets features), then any other {"bytes", "path"} struct."""
    pa = require("pyarrow")
    typed = [c for c, f in (features or {}).items() if _feature_type(f) == "Audio"]
    structs = [f.name for f in schema if pa.types.is_struct(f.type) and f.name not in typed
               and {"bytes", "path"} <= {f.type.field(i).name for i in range(f.type.num_fields)}]
    return typed + structs


def _feature_type(f) -> str | None:
    # datasets' own Features hold objects; parquet metadata holds their JSON ({"_type": "Audio"}).
    return f.get("_type") if isinstance(f, dict) else type(f).__name__


def parquet_part(path: Path, name: str | None) -> Part:
    pq = require("pyarrow.parquet")
    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a damaged or non-parquet file
        raise SpeechtuneError(f"{path}: not a readable parquet file ({e})",
                              "check the file; write it with Dataset.to_parquet") from None
    meta = (f.schema_arrow.metadata or {}).get(b"huggingface")
    features = json.loads(meta).get("info", {}).get("features") if meta else None
    return Part(name, str(path), path.parent, f.metadata.num_rows, list(f.schema_arrow.names),
                _audio_columns(f.schema_arrow, features),
                lambda: f.iter_batches(batch_size=BATCH_ROWS))


def dataset_part(ds, name: str | None, source: str, base: Path | None) -> Part:
    """A datasets.Dataset, read raw: with_format("arrow") skips every feature's decoding."""
    raw = ds.with_format("arrow")
    return Part(name, source, base, ds.num_rows, list(ds.column_names),
                _audio_columns(ds.data.schema, dict(ds.features)),
                lambda: raw.iter(batch_size=BATCH_ROWS))


def _parts_of(obj, source: str, base: Path | None) -> list[Part]:
    """Parts of a Dataset (one) or a DatasetDict (one per split)."""
    if hasattr(obj, "keys"):
        return [dataset_part(ds, name, f"{source}/{name}", base / name if base else None)
                for name, ds in obj.items()]
    return [dataset_part(obj, getattr(obj, "split", None) and str(obj.split), source, base)]


def open_path(path: Path, config: str | None = None) -> list[Part]:
    """The parts of a dataset on disk: a parquet or arrow file, a save_to_disk folder (Dataset or
    DatasetDict), or a hub-repo-like folder of parquet files (`data/train-00000-of-00001.parquet`,
    optionally one subfolder per config)."""
    if path.is_file():
        if path.suffix.lower() == ".arrow":
            return [dataset_part(require().Dataset.from_file(str(path)), None, str(path), path.parent)]
        return [parquet_part(path, None)]
    if is_dataset_dir(path):
        if config:
            raise SpeechtuneError(f"{path}: --hf-config picks a config of a hub dataset or a hub-like folder; "
                                  "a save_to_disk folder has none", "drop --hf-config")
        return _parts_of(require().load_from_disk(str(path)), str(path), path)
    return _hub_folder_parts(_config_dir(path, config))


def _config_dir(path: Path, config: str | None) -> Path:
    """The folder of the wanted config: `config` if given, else the only one there is."""
    from datasets.data_files import SPLIT_KEYWORDS
    split_words = {w for words in SPLIT_KEYWORDS.values() for w in words}
    configs = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and d.name != "data" and d.name.lower() not in split_words and has_parquet(d))
    if config:
        if config not in configs:
            raise SpeechtuneError(f"{path}: no config {config!r}",
                                  f"configs here: {', '.join(configs) or 'none (drop --hf-config)'}")
        return path / config
    if len(configs) > 1 and not (path / "data").is_dir():
        raise SpeechtuneError(f"{path} holds {len(configs)} configs: {', '.join(configs)}",
                              "pick one with --hf-config NAME")
    return path / configs[0] if len(configs) == 1 and not (path / "data").is_dir() else path


def _hub_folder_parts(root: Path) -> list[Part]:
    """Split names from file and folder names, by the hub's own rules (datasets.data_files)."""
    require()
    from datasets.data_files import DataFilesDict, get_data_patterns
    try:
        files = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root))
    except Exception as e:  # EmptyDatasetError when no file matches
        raise SpeechtuneError(f"{root}: no dataset files found ({e})",
                              "expected data/train-00000-of-00001.parquet and the like") from None
    parts = [parquet_part(Path(f), str(split)) for split, fs in files.items() for f in fs
             if str(f).lower().endswith(".parquet")]
    if not parts:
        raise SpeechtuneError(f"{root}: no parquet files found", "a hub-like folder holds *.parquet files")
    return parts


def open_hub(name: str, config: str | None = None, split: str | None = None) -> list[Part]:
    """The parts of a hub dataset through datasets.load_dataset (downloads unless cached)."""
    datasets = require()
    try:
        obj = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # not found, gated, offline, unknown config or split: all say so in the message
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise SpeechtuneError(f"cannot load the Hugging Face dataset {name!r}"
                              f"{f' (config {config})' if config else ''}: {first}",
                              "check the name, --hf-config and --hf-split; gated datasets such as Common Voice "
                              "need their terms accepted on the hub and `hf auth login`; offline "
                              "(HF_HUB_OFFLINE=1) only cached datasets load") from None
    source = "hf:" + "/".join(x for x in (name, config) if x)
    if hasattr(obj, "keys"):
        return _parts_of(obj, source, None)
    return [dataset_part(obj, split, f"{source}/{split}" if split else source, None)]
