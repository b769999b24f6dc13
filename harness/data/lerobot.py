"""LeRobot v3.0 dataset reading and writing with pyarrow and PyAV only.

The `lerobot` package pins an older torch and imports torchvision (whose PyPI wheels do not load
beside CPU torch 2.13), so the harness speaks the on-disk format itself:

    meta/info.json                            codebase_version "v3.0", fps, features, paths
    meta/stats.json                           per feature: mean/std/min/max/count (images: (3,1,1) in [0,1])
    meta/tasks.parquet                        index = task string, column task_index
    meta/episodes/chunk-000/file-000.parquet  one row per episode: length, tasks, from/to indices,
                                              data and video file indices, video from/to timestamps
    data/chunk-000/file-000.parquet           one row per frame
    videos/<key>/chunk-000/file-000.mp4       episodes concatenated, one file per camera

`DatasetWriter` appends one episode at a time (frames straight to the open files), so writing
never holds more than the episode in hand, and its JSON state lets another process continue a
dataset after an interruption (`wam-bench demos` resumes that way). tests/test_lerobot_io.py
proves the real `LeRobotDataset` reads what we write and vice versa.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import UserError

CODEBASE_VERSION = "v3.0"
STATE, ACTION, IMAGE_PREFIX = "observation.state", "action", "observation.images."
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE, DATA_FILE_MB, VIDEO_FILE_MB = 1000, 100, 200
INDEX_FEATURES = {  # the bookkeeping columns every LeRobot frame carries
    "timestamp": "float32", "frame_index": "int64", "episode_index": "int64",
    "index": "int64", "task_index": "int64",
}
VIDEO_CODEC, VIDEO_OPTIONS = "h264", {"g": "2", "crf": "18"}  # lerobot decodes h264; g=2 seeks fast
EXTRA_COLUMN = "wam_bench/extra"  # per-episode metadata (JSON) in the episodes table


@dataclass
class Episode:
    """One demonstration: what a demo writer yields and what a reader returns."""
    task: str
    state: np.ndarray               # (T, S) float32
    action: np.ndarray              # (T, A) float32
    images: dict[str, np.ndarray]   # short camera name -> (T, H, W, 3) uint8
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.action)


# --------------------------------------------------------------------------- statistics

class _RunningStats:
    """Mean/std/min/max/count over batches, merged exactly (Chan et al.), so a generator of
    episodes never has to be held in memory to get numpy-equal statistics."""

    def __init__(self):
        self.n, self.mean, self.m2, self.lo, self.hi = 0, None, None, None, None

    def add(self, x: np.ndarray, axes: tuple[int, ...]) -> None:
        x = x.astype(np.float64)
        n = int(np.prod([x.shape[a] for a in axes]))
        mean, lo, hi = x.mean(axis=axes), x.min(axis=axes), x.max(axis=axes)
        m2 = ((x - np.expand_dims(mean, axes)) ** 2).sum(axis=axes)
        if self.n == 0:
            self.n, self.mean, self.m2, self.lo, self.hi = n, mean, m2, lo, hi
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta ** 2 * self.n * n / total
        self.n, self.lo, self.hi = total, np.minimum(self.lo, lo), np.maximum(self.hi, hi)

    def state(self) -> dict:
        """Exact JSON-able state (floats round-trip through JSON bit for bit)."""
        return {"n": self.n, **{k: np.asarray(getattr(self, k), np.float64).tolist()
                                for k in ("mean", "m2", "lo", "hi")}}

    @classmethod
    def from_state(cls, st: dict) -> "_RunningStats":
        s = cls()
        s.n = int(st["n"])
        s.mean, s.m2, s.lo, s.hi = (np.asarray(st[k], np.float64) for k in ("mean", "m2", "lo", "hi"))
        return s

    def to_json(self, image: bool) -> dict:
        shape = (-1, 1, 1) if image else (-1,)  # lerobot keeps image stats as (C, 1, 1)
        out = {k: np.reshape(v, shape).tolist() for k, v in
               (("min", self.lo), ("max", self.hi), ("mean", self.mean),
                ("std", np.sqrt(self.m2 / self.n)))}
        out["count"] = [self.n]
        return out


# --------------------------------------------------------------------------- writing

def _png(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _fps_json(fps: float):
    return int(fps) if float(fps).is_integer() else float(fps)


class _VideoStream:
    """One camera's mp4: episodes appended back to back, frame pts = the file's frame index."""

    def __init__(self, path: Path, fps: float, height: int, width: int):
        import av
        if height % 2 or width % 2:
            raise UserError(f"camera {path.parent.parent.name}: {height}x{width} frames need "
                            "even sides for h264 yuv420p; write with video=False or resize")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        rate = Fraction(fps).limit_denominator(1000)
        self.stream = self.container.add_stream(VIDEO_CODEC, rate=rate, options=dict(VIDEO_OPTIONS))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.time_base = 1 / rate
        self.frames = 0

    def append(self, frames: np.ndarray) -> None:
        import av
        for img in frames:
            # converted here, not inside encode(): PyAV's implicit conversion there gave different
            # bytes from run to run on a loaded machine (measured), and a resumed dataset must not
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")
            frame.pts = self.frames
            self.frames += 1
            self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 == CHUNKS_SIZE else (chunk, file + 1)


def _features(ep: Episode, video: bool, fps: float) -> dict:
    feats = {
        STATE: {"dtype": "float32", "shape": [ep.state.shape[1]], "names": None},
        ACTION: {"dtype": "float32", "shape": [ep.action.shape[1]], "names": None},
    }
    for cam, img in ep.images.items():
        h, w = img.shape[1:3]
        feat = {"dtype": "video" if video else "image", "shape": [h, w, 3],
                "names": ["height", "width", "channels"]}
        if video:
            feat["info"] = {"video.height": h, "video.width": w, "video.codec": VIDEO_CODEC,
                            "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                            "video.fps": _fps_json(fps), "video.channels": 3, "has_audio": False}
        feats[IMAGE_PREFIX + cam] = feat
    for name, dtype in INDEX_FEATURES.items():
        feats[name] = {"dtype": dtype, "shape": [1], "names": None}
    return feats


def _schema(features: dict) -> pa.Schema:
    fields = []
    for key, ft in features.items():
        if ft["dtype"] == "image":
            fields.append(pa.field(key, pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
        elif ft["dtype"] == "video":
            continue
        elif key in INDEX_FEATURES:
            fields.append(pa.field(key, pa.from_numpy_dtype(np.dtype(ft["dtype"]))))
        else:
            fields.append(pa.field(key, pa.list_(pa.float32(), ft["shape"][0])))
    return pa.schema(fields)


def _check_episode(i: int, ep: Episode, features: dict | None) -> None:
    """Reject malformed episodes with a message naming the episode and the field; from the second
    episode on, cameras, image shapes and widths must match the dataset's features."""
    where = f"episode {i}"
    if not isinstance(ep.task, str) or not ep.task:
        raise UserError(f"{where}: task must be a non-empty string")
    for name, arr in (("state", ep.state), ("action", ep.action)):
        if np.ndim(arr) != 2:
            raise UserError(f"{where}: {name} must be (T, D), got shape {np.shape(arr)}")
    T = len(ep.action)
    if T == 0 or len(ep.state) != T:
        raise UserError(f"{where}: state has {len(ep.state)} steps, action {T}; need equal and > 0")
    for cam, img in ep.images.items():
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[0] != T or img.shape[3] != 3:
            raise UserError(f"{where}: images['{cam}'] must be ({T}, H, W, 3) uint8, "
                            f"got {img.shape} {img.dtype}")
    if features is None:
        return
    cams = sorted(k.removeprefix(IMAGE_PREFIX) for k, f in features.items() if f["dtype"] in ("image", "video"))
    if sorted(ep.images) != cams:
        raise UserError(f"{where}: cameras {sorted(ep.images)} differ from episode 0's {cams}")
    for cam, img in ep.images.items():
        want = tuple(features[IMAGE_PREFIX + cam]["shape"])
        if img.shape[1:] != want:
            raise UserError(f"{where}: images['{cam}'] is {img.shape[1:]}, episode 0's is {want}")
    for name, key in (("state", STATE), ("action", ACTION)):
        if getattr(ep, name).shape[1] != features[key]["shape"][0]:
            raise UserError(f"{where}: {name} width differs from episode 0's")


class DatasetWriter:
    """Appends episodes to a LeRobot v3.0 dataset as they come, one at a time: frames go straight
    into the open data parquet and camera mp4s, and only the per-episode metadata rows, task
    indices and running statistics stay in memory. `roll()` closes the open files (the next
    episode starts new ones) and `state()` is then a JSON-able snapshot from which
    `DatasetWriter(..., state=...)` continues in another process: this is what lets `demos`
    stream to disk and resume after a kill. `finish()` writes meta/ (derived from the rows and
    statistics only). Data files also roll past DATA_FILE_MB."""

    def __init__(self, root, fps: float, *, video: bool = True, state: dict | None = None):
        self.root, self.fps, self.video = Path(root), float(fps), video
        st = state or {}
        self.features: dict | None = st.get("features")
        self.rows: list[dict] = list(st.get("rows", []))
        self.tasks: dict[str, int] = dict(st.get("tasks", {}))
        self.stats = {k: _RunningStats.from_state(v) for k, v in st.get("stats", {}).items()}
        self.total = int(st.get("total", 0))
        self.data_pos = tuple(st.get("data_pos", (0, 0)))    # (chunk, file) of the next data file
        self.video_pos = tuple(st.get("video_pos", (0, 0)))
        self._data = self._schema = None
        self._data_bytes = 0
        self._videos: dict[str, _VideoStream] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, ep: Episode) -> None:
        i = len(self.rows)
        _check_episode(i, ep, self.features)
        if self.features is None:
            self.features = _features(ep, self.video, self.fps)
        T, fps = len(ep), self.fps
        task_index = self.tasks.setdefault(ep.task, len(self.tasks))
        cols = {
            STATE: np.asarray(ep.state, np.float32), ACTION: np.asarray(ep.action, np.float32),
            "timestamp": (np.arange(T) / fps).astype(np.float32),
            "frame_index": np.arange(T, dtype=np.int64),
            "episode_index": np.full(T, i, np.int64),
            "index": np.arange(self.total, self.total + T, dtype=np.int64),
            "task_index": np.full(T, task_index, np.int64),
        }
        arrays = {k: pa.FixedSizeListArray.from_arrays(pa.array(cols[k].ravel()), cols[k].shape[1])
                  for k in (STATE, ACTION)}
        arrays.update({k: pa.array(cols[k]) for k in INDEX_FEATURES})
        row = {"episode_index": i, "tasks": [ep.task], "length": T,
               "dataset_from_index": self.total, "dataset_to_index": self.total + T}
        schema = self._open_data()
        for cam, img in ep.images.items():
            key = IMAGE_PREFIX + cam
            if self.video:
                stream = self._video(cam, img.shape[1:3])
                start = stream.frames
                stream.append(img)
                row.update({f"videos/{key}/chunk_index": self.video_pos[0],
                            f"videos/{key}/file_index": self.video_pos[1],
                            f"videos/{key}/from_timestamp": start / fps,
                            f"videos/{key}/to_timestamp": (start + T) / fps})
            else:
                arrays[key] = pa.array([{"bytes": _png(f), "path": None} for f in img],
                                       type=schema.field(key).type)
            self.stats.setdefault(key, _RunningStats()).add(img / 255.0, (0, 1, 2))
        for k, v in cols.items():
            self.stats.setdefault(k, _RunningStats()).add(v.reshape(T, -1), (0,))
        table = pa.table({n: arrays[n] for n in schema.names}, schema=schema)
        self._data.write_table(table)
        self._data_bytes += table.nbytes
        row.update({"data/chunk_index": self.data_pos[0], "data/file_index": self.data_pos[1],
                    "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                    EXTRA_COLUMN: json.dumps(ep.extra, sort_keys=True, default=str)})
        self.rows.append(row)
        self.total += T
        if self._data_bytes > DATA_FILE_MB * 2**20:
            self._close_data()

    def _open_data(self) -> pa.Schema:
        if self._data is None:
            self._schema = self._schema or _schema(self.features)
            path = self.root / DATA_PATH.format(chunk_index=self.data_pos[0], file_index=self.data_pos[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data, self._data_bytes = pq.ParquetWriter(path, self._schema), 0
        return self._schema

    def _close_data(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None
            self.data_pos = _next_file(*self.data_pos)

    def _video(self, cam: str, hw) -> _VideoStream:
        if cam not in self._videos:
            key = IMAGE_PREFIX + cam
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=self.video_pos[0],
                                                 file_index=self.video_pos[1])
            self._videos[cam] = _VideoStream(path, self.fps, *hw)
        return self._videos[cam]

    def roll(self) -> None:
        """Close the open data and video files; the next episode goes into new files."""
        self._close_data()
        if self._videos:
            streams, self._videos = self._videos, {}
            for s in streams.values():
                s.close()
            self.video_pos = _next_file(*self.video_pos)

    def close(self) -> None:
        """Close open files without writing meta/ (after a failure)."""
        try:
            self.roll()
        except Exception:  # noqa: BLE001 - already failing; the files are discarded or re-written
            pass

    def state(self) -> dict:
        """JSON-able snapshot of everything written so far; call after `roll()`."""
        if self._data is not None or self._videos:
            raise RuntimeError("DatasetWriter.state() needs closed files: call roll() first")
        return {"features": self.features, "rows": self.rows, "tasks": self.tasks, "total": self.total,
                "stats": {k: s.state() for k, s in self.stats.items()},
                "data_pos": list(self.data_pos), "video_pos": list(self.video_pos)}

    def finish(self, *, robot_type: str = "wam-bench", info_extra: dict | None = None) -> None:
        """Close the files and write meta/: episodes, tasks, stats, info."""
        self.roll()
        root, rows = self.root, self.rows
        if not rows:
            raise UserError(f"dataset {root}: no episodes to write")
        meta = root / "meta"
        ep_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), ep_path)
        task_names = sorted(self.tasks, key=self.tasks.get)
        pq.write_table(pa.table({"task_index": pa.array([self.tasks[t] for t in task_names], pa.int64()),
                                 "__index_level_0__": pa.array(task_names, pa.large_string())}),
                       meta / "tasks.parquet")
        _pandas_index(meta / "tasks.parquet")
        image_keys = {k for k, f in self.features.items() if f["dtype"] in ("image", "video")}
        (meta / "stats.json").write_text(json.dumps(
            {k: s.to_json(k in image_keys) for k, s in self.stats.items()}, indent=2))
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": robot_type,
            "total_episodes": len(rows), "total_frames": self.total, "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILE_MB,
            "video_files_size_in_mb": VIDEO_FILE_MB, "fps": _fps_json(self.fps),
            "splits": {"train": f"0:{len(rows)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video and image_keys else None, "features": self.features,
            "wam_bench": info_extra or {},
        }
        (meta / "info.json").write_text(json.dumps(info, indent=4))


def write_dataset(root, episodes: Iterable[Episode], fps: float, *, robot_type="wam-bench",
                  video: bool = True, info_extra: dict | None = None,
                  overwrite: bool = False) -> Path:
    """Write `episodes` (any iterable, consumed once, one episode in memory at a time) as a
    LeRobot v3.0 dataset at `root`.

    Written into a sibling `root.tmp-XXXX` and renamed at the end, so a crash or a bad episode
    never leaves a half dataset at `root`. An existing `root` is an error unless `overwrite`.
    """
    root = Path(root)
    if root.exists() and not overwrite:
        raise UserError(f"dataset {root}: already exists; delete it or pass overwrite")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        writer = DatasetWriter(tmp, fps, video=video)
        try:
            for ep in episodes:
                writer.append(ep)
        finally:
            writer.close()
        writer.finish(robot_type=robot_type, info_extra=info_extra)
        replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder `src` to `dst`, replacing what is there (the old one is removed after)."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=dst.name + ".old-", dir=dst.parent))
        os.replace(dst, old / "d")
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _pandas_index(path: Path) -> None:
    """Tag `__index_level_0__` as the pandas index, as `DataFrame.to_parquet` does, so lerobot's
    `pd.read_parquet(tasks.parquet)` gets the task strings as the index."""
    table = pq.read_table(path)
    pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
         "numpy_type": "int64", "metadata": None},
        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
         "numpy_type": "object", "metadata": None}]}
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)


# --------------------------------------------------------------------------- reading

class LeRobotData:
    """An opened LeRobot v3.0 dataset: metadata in memory, episodes decoded on request."""

    def __init__(self, root: Path, camera_map: dict[str, str] | None):
        self.root = root
        self.info = json.loads((root / "meta" / "info.json").read_text())
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise UserError(f"dataset {root}: codebase_version {version!r} is not supported; "
                            "convert it to v3.0 with lerobot's convert_dataset_v21_to_v30")
        self.fps = float(self.info["fps"])
        self.info_extra = self.info.get("wam_bench") or {}
        feats = self.info["features"]
        for key in (STATE, ACTION):
            if key not in feats:
                raise UserError(f"dataset {root}: no '{key}' feature in meta/info.json")
        self._cameras = {}  # feature key -> short name
        for key, ft in feats.items():
            if ft["dtype"] in ("image", "video"):
                if camera_map is not None:
                    if key in camera_map:
                        self._cameras[key] = camera_map[key]
                else:
                    self._cameras[key] = key.removeprefix(IMAGE_PREFIX)
        if camera_map is not None and set(camera_map) - set(self._cameras):
            raise UserError(f"dataset {root}: camera_map names {sorted(set(camera_map) - set(self._cameras))}"
                            f" but its image features are {sorted(k for k in feats if feats[k]['dtype'] in ('image', 'video'))}")
        self.camera_names = list(self._cameras.values())
        self.stats = {k: {s: np.asarray(v) for s, v in d.items()} for k, d in
                      json.loads((root / "meta" / "stats.json").read_text()).items()} \
            if (root / "meta" / "stats.json").exists() else {}
        tasks = pq.read_table(root / "meta" / "tasks.parquet").to_pydict()
        names = tasks.get("__index_level_0__") or tasks.get("task")
        self._task_by_index = dict(zip(tasks["task_index"], names))
        self.tasks = [self._task_by_index[i] for i in sorted(self._task_by_index)]
        ep_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
        eps = pa.concat_tables([pq.read_table(p) for p in ep_files]).to_pylist()
        self._episodes = sorted(eps, key=lambda r: r["episode_index"])
        self.num_episodes = len(self._episodes)

    @property
    def state_dim(self) -> int:
        return int(self.info["features"][STATE]["shape"][0])

    @property
    def image_stride(self) -> int:
        """Steps between the episode's rendered frames (`demos --image-stride`): a row between two
        holds the last rendered frame. 1 (every row its own frame) unless the dataset records more."""
        return int(self.info_extra.get("image_stride", 1))

    @property
    def action_dim(self) -> int:
        return int(self.info["features"][ACTION]["shape"][0])

    def __len__(self) -> int:
        return self.num_episodes

    def episode(self, i: int) -> Episode:
        """Decode episode `i` (position in episode order) fully into memory."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range (dataset has {self.num_episodes})")
        readers = _Readers(self)
        try:
            return self._episode(self._episodes[i], readers)
        finally:
            readers.close()

    def episodes(self) -> Iterator[Episode]:
        """Every episode in order. v3 packs many episodes per file, so one pass keeps each data
        file's table and each video's decoder open across episodes (reading a 1000-episode set
        with `episode(i)` would re-scan the parquet and re-seek the video 1000 times)."""
        readers = _Readers(self)
        try:
            for meta in self._episodes:
                yield self._episode(meta, readers)
        finally:
            readers.close()

    def _episode(self, meta: dict, readers: "_Readers") -> Episode:
        ep_index = meta["episode_index"]
        path = self.root / self.info["data_path"].format(
            chunk_index=meta["data/chunk_index"], file_index=meta["data/file_index"])
        image_cols = [k for k in self._cameras if self.info["features"][k]["dtype"] == "image"]
        table = readers.rows(path, [STATE, ACTION, "frame_index", "task_index", *image_cols], ep_index)
        T = table.num_rows
        state = _fixed_list(table[STATE], T)
        action = _fixed_list(table[ACTION], T)
        images = {}
        for key, name in self._cameras.items():
            if key in image_cols:
                images[name] = np.stack([_decode_image(cell) for cell in table[key].to_pylist()])
            else:
                images[name] = self._decode_video(key, meta, T, readers)
        task = self._task_by_index[table["task_index"][0].as_py()] if T else meta["tasks"][0]
        extra = json.loads(meta[EXTRA_COLUMN]) if meta.get(EXTRA_COLUMN) else {}
        return Episode(task=task, state=state, action=action, images=images, extra=extra)

    def _decode_video(self, key: str, meta: dict, T: int, readers: "_Readers") -> np.ndarray:
        """Frames of one episode from a (possibly multi-episode) mp4, picked by timestamp."""
        path = self.root / self.info["video_path"].format(
            video_key=key, chunk_index=meta[f"videos/{key}/chunk_index"],
            file_index=meta[f"videos/{key}/file_index"])
        frames = readers.video(path).read(meta[f"videos/{key}/from_timestamp"], T)
        missing = [k for k, f in enumerate(frames) if f is None]
        if missing:
            raise UserError(f"dataset {self.root}: video {path.name} of {key} lacks frames "
                            f"{missing[:5]} of episode {meta['episode_index']}; the file is damaged")
        return np.stack(frames)


class _Readers:
    """The open files of one pass over a dataset: the current data file's table (sorted by episode
    and frame) and one sequential decoder per video file."""

    def __init__(self, data: LeRobotData):
        self.fps = data.fps
        self._table: tuple | None = None   # (path, columns, table, episode_index array)
        self._videos: dict[Path, _VideoReader] = {}

    def rows(self, path: Path, columns: list[str], ep_index: int) -> pa.Table:
        if self._table is None or self._table[:2] != (path, columns):
            t = pq.read_table(path, columns=["episode_index", *columns])
            t = t.sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])
            self._table = (path, columns, t, t["episode_index"].to_numpy())
        _, _, t, eps = self._table
        lo, hi = np.searchsorted(eps, ep_index, "left"), np.searchsorted(eps, ep_index, "right")
        return t.slice(lo, hi - lo)

    def video(self, path: Path) -> "_VideoReader":
        if path not in self._videos:
            self._videos[path] = _VideoReader(path, self.fps)
        return self._videos[path]

    def close(self) -> None:
        for v in self._videos.values():
            v.close()
        self._videos.clear()


class _VideoReader:
    """Decodes one mp4 forward; a request before the current position re-opens and seeks."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.half = path, fps, 0.5 / fps
        self.container = None

    def _open(self, start: float) -> None:
        import av
        self.close()
        self.container = av.open(str(self.path))
        self.stream = self.container.streams.video[0]
        if start > 0:
            self.container.seek(int(start / self.stream.time_base), stream=self.stream, backward=True)
        self._frames = self.container.decode(self.stream)
        self._next = None   # a decoded frame not yet consumed (the first of the next episode)
        self._t = -1.0      # timestamp of the last frame consumed

    def read(self, start: float, T: int) -> list:
        want_last = start + (T - 1) / self.fps
        if self.container is None or start < self._t + self.half / 2:
            self._open(start)
        frames: list[np.ndarray | None] = [None] * T
        while True:
            frame = self._next if self._next is not None else next(self._frames, None)
            self._next = None
            if frame is None:
                break
            t = float(frame.pts * self.stream.time_base)
            if t > want_last + self.half:
                self._next = frame
                break
            self._t = t
            k = int(round((t - start) * self.fps))
            if 0 <= k < T and abs(t - (start + k / self.fps)) < self.half:
                frames[k] = frame.to_ndarray(format="rgb24")
        return frames

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


def _fixed_list(col: pa.ChunkedArray, T: int) -> np.ndarray:
    if T == 0:
        return np.zeros((0, 0), np.float32)
    flat = col.combine_chunks()
    return np.asarray(flat.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(T, -1)


def _decode_image(cell) -> np.ndarray:
    from PIL import Image
    if cell.get("bytes") is None:
        raise UserError(f"image cell refers to file {cell.get('path')!r}; only embedded images are read")
    return np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))


def open_dataset(root, *, camera_map: dict[str, str] | None = None) -> LeRobotData:
    """Open the LeRobot v3.0 dataset at `root`; `camera_map` renames image features to short
    camera names (default: strip "observation.images.")."""
    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise UserError(f"dataset {root}: not a LeRobot dataset (no meta/info.json); "
                        "write one with `wam-bench demos --suite tabletop`")
    return LeRobotData(root, camera_map)


def dataset_hash(root) -> str:
    """A content hash of a dataset folder, fast on a 5 GB one: the bytes of every meta/ file (info,
    stats, tasks, the episode index) and the relative name and size of every data/ and videos/ file
    (their frames are not read). Equal datasets, equal hash, wherever they lie; the window cache
    and hidden (temporary) files beside them are not part of it."""
    root = Path(root)
    h = hashlib.sha256()
    for sub, content in (("meta", True), ("data", False), ("videos", False)):
        for f in sorted(p for p in (root / sub).rglob("*")
                        if p.is_file() and not any(x.startswith(".") for x in p.relative_to(root).parts)):
            rel = f.relative_to(root).as_posix().encode()
            h.update(rel + b"\0" + (f.read_bytes() if content else str(f.stat().st_size).encode()) + b"\0")
    return h.hexdigest()


def dataset_identity(datasets) -> list[dict]:
    """Which demonstrations a training saw: one {"path", "sha256"} per dataset, in the order given
    (a folder or a list of them). Trainings compare by hash (`same_data`); the path is for a reader."""
    roots = [datasets] if isinstance(datasets, (str, os.PathLike)) else list(datasets)
    return [{"path": str(Path(r).resolve()), "sha256": dataset_hash(r)} for r in roots]


def same_data(a: list[dict] | None, b: list[dict] | None) -> bool:
    """Whether two `dataset_identity` lists name the same data (by content, not by path)."""
    return a is not None and b is not None and [d["sha256"] for d in a] == [d["sha256"] for d in b]
