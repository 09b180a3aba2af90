"""Episode writer: one step at a time into a LeRobot v3 dataset, crash-safe per episode.

LeRobot leaves readable files only after ``finalize()`` (parquet footers are written
on close). So the writer finalises after every episode and resumes for the next one,
and keeps a commit journal, ``meta/vla_episodes.jsonl``:

1. before an episode is saved, a *snapshot* records the files that exist and a copy
   of the small metadata files that ``save_episode`` rewrites in place (info, stats,
   tasks);
2. the episode is saved and the dataset finalised (every episode gets files of its
   own, because a resumed LeRobot writer always starts new data/video/meta files);
3. one JSON line (episode index, source, seed, ...) is appended and fsynced: the commit.

A process killed anywhere before step 3 leaves files the journal does not know;
``repair()`` (run on every open) restores the snapshot and deletes them, so the
dataset opens with every committed episode intact and the broken one gone.
The cost is one finalise/resume per episode; ``benchmarks/bench_writer.py`` measures it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from vla.errors import DataError, ShapeError
from vla.types import ACTION, DONE, INTERVENTION, POLICY_ACTION, REWARD, SUCCESS, TASK, is_valid_source

log = logging.getLogger(__name__)

JOURNAL = "meta/vla_episodes.jsonl"
MARKER = "meta/vla_writer.json"
SNAPSHOT_DIR = "meta/.vla_snapshot"
# Files that LeRobot rewrites in place while saving an episode.
_REWRITTEN = ("meta/info.json", "meta/stats.json", "meta/tasks.parquet")
MIN_VIDEO_SIDE = 32
# Folders where each saved episode adds new files.
_APPENDED = ("data", "videos", "meta/episodes")


def build_features(obs_spec: dict[str, tuple], action_dim: int, use_videos: bool = True) -> dict:
    """LeRobot feature spec for our columns (observation keys + the step columns)."""
    features: dict[str, dict] = {}
    for key, shape in obs_spec.items():
        shape = tuple(int(s) for s in shape)
        if key.startswith("observation.images."):
            if len(shape) != 3 or shape[-1] != 3:
                raise ShapeError(f"camera {key}: expected shape (H, W, 3), got {shape}")
            if use_videos and min(shape[:2]) < MIN_VIDEO_SIDE:
                # LeRobot's default AV1 encoder aborts the whole process below this size
                raise ShapeError(
                    f"camera {key}: {shape[0]}x{shape[1]} is too small for video encoding "
                    f"(min {MIN_VIDEO_SIDE}); use larger frames or use_videos=False"
                )
            features[key] = {
                "dtype": "video" if use_videos else "image",
                "shape": shape,
                "names": ["height", "width", "channels"],
            }
        elif key == TASK:
            continue
        else:
            features[key] = {"dtype": "float32", "shape": shape, "names": None}
    for key in (ACTION, POLICY_ACTION):
        features[key] = {"dtype": "float32", "shape": (int(action_dim),), "names": None}
    features[INTERVENTION] = {"dtype": "bool", "shape": (1,), "names": None}
    features[REWARD] = {"dtype": "float32", "shape": (1,), "names": None}
    features[SUCCESS] = {"dtype": "bool", "shape": (1,), "names": None}
    features[DONE] = {"dtype": "bool", "shape": (1,), "names": None}
    return features


def _fsync_write(path: Path, text: str, append: bool = False) -> None:
    with open(path, "a" if append else "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _list_files(root: Path) -> list[str]:
    out = []
    for folder in _APPENDED:
        base = root / folder
        if base.exists():
            out += [str(p.relative_to(root)) for p in base.rglob("*") if p.is_file()]
    return sorted(out)


LOCK = "meta/.vla_writer.lock"  # flock-ed by the live writer: readers skip repair, a 2nd writer is refused


def _writer_alive(root: Path) -> bool:
    """True while an EpisodeWriter in some process holds the dataset's lock (released on kill -9)."""
    path = root / LOCK
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def read_journal(root: str | Path) -> list[dict]:
    """Committed episodes (in order), or [] for a dataset without a journal."""
    path = Path(root) / JOURNAL
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line: the commit never happened
    return entries


def repair(root: str | Path, _owner: bool = False) -> int:
    """Bring a dataset written by this writer back to its last committed episode.

    Returns the number of committed episodes. A dataset without our marker (written
    by LeRobot itself) is left untouched, and so is one that a live writer holds
    (``_owner``: the caller is that writer).
    """
    root = Path(root)
    if not (root / MARKER).exists():
        return -1
    committed = read_journal(root)
    if not _owner and _writer_alive(root):
        # a live writer owns the files past its last commit: a reader must not roll them back
        return len(committed)
    text = (root / JOURNAL).read_text() if (root / JOURNAL).exists() else ""
    clean = "".join(json.dumps(e) + "\n" for e in committed)
    if text.count("\n") != len(committed) or (text and not text.endswith("\n")):
        # a torn last line: replace the journal atomically (never truncate it in place)
        tmp = root / (JOURNAL + ".tmp")
        _fsync_write(tmp, clean)
        os.replace(tmp, root / JOURNAL)
    snap = root / SNAPSHOT_DIR
    info = json.loads((root / "meta/info.json").read_text()) if (root / "meta/info.json").exists() else None
    consistent = info is not None and info.get("total_episodes") == len(committed)
    snap_state = json.loads((snap / "state.json").read_text()) if (snap / "state.json").exists() else None
    # the snapshot is taken before each save; it is stale once that save was committed
    if snap_state is not None and snap_state["episodes_before"] == len(committed):
        known = set(snap_state["files"])
        stray = [f for f in _list_files(root) if f not in known]
        if stray or not consistent:
            log.warning("repairing %s: dropping an uncommitted episode (%d stray files)", root, len(stray))
            for f in stray:
                (root / f).unlink()
            for name in _REWRITTEN:
                src = snap / Path(name).name
                if src.exists():
                    shutil.copy2(src, root / name)
                elif (root / name).exists() and name != "meta/info.json":
                    (root / name).unlink()  # did not exist before the broken episode
    elif not consistent and len(committed) == 0 and snap_state is None:
        # killed during the very first episode: nothing committed, start clean
        log.warning("repairing %s: no episode was committed, resetting the dataset", root)
        for folder in _APPENDED:
            shutil.rmtree(root / folder, ignore_errors=True)
        for name in ("meta/stats.json", "meta/tasks.parquet"):
            (root / name).unlink(missing_ok=True)
        if info is not None:
            info.update(total_episodes=0, total_frames=0, total_tasks=0, splits={})
            _fsync_write(root / "meta/info.json", json.dumps(info, indent=4))
    shutil.rmtree(root / "images", ignore_errors=True)  # frames of an unsaved episode
    info = json.loads((root / "meta/info.json").read_text())
    if info.get("total_episodes") != len(committed):
        raise DataError(
            f"{root}: cannot repair: info.json says {info.get('total_episodes')} episodes, "
            f"journal has {len(committed)}"
        )
    return len(committed)


class EpisodeWriter:
    """Create or resume a LeRobot dataset at ``root`` and append episodes step by step."""

    def __init__(
        self,
        root: str | Path,
        fps: int,
        obs_spec: dict[str, tuple],
        action_dim: int,
        robot_type: str = "sim",
        use_videos: bool = True,
    ):
        import datasets
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        datasets.disable_progress_bars()  # one "Map" bar per saved episode otherwise

        self._cls = LeRobotDataset
        self.root = Path(root)
        self.repo_id = f"local/{self.root.name}"
        self.features = build_features(obs_spec, action_dim, use_videos)
        self.obs_keys = [k for k in obs_spec if k != TASK]
        self.action_dim = int(action_dim)
        self.fps = int(fps)
        self._steps: list[dict] = []
        self._ds = None  # the open LeRobot dataset, kept between episodes

        self._lock = None
        if (self.root / "meta/info.json").exists():
            self._check_features()  # read-only
            self._take_lock()  # before repair: a second writer must not roll back the first's episode
            try:
                n = repair(self.root, _owner=True)
                if n < 0:  # a LeRobot dataset we did not write: adopt it
                    self._adopt()
            except BaseException:
                self.close()
                raise
            self._committed = len(read_journal(self.root))
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise DataError(f"{self.root}: exists and is not a LeRobot dataset; choose another out dir")
            if self.root.exists():
                self.root.rmdir()
            self._ds = LeRobotDataset.create(
                self.repo_id, fps=self.fps, features=self.features, root=self.root,
                robot_type=robot_type, use_videos=use_videos,
            )
            self._ds.finalize()
            self._ds = None
            _fsync_write(self.root / MARKER, json.dumps({"writer": "vla", "version": 1}))
            _fsync_write(self.root / JOURNAL, "")
            self._committed = 0
            self._take_lock()

    def _take_lock(self) -> None:
        """Hold an exclusive lock for the writer's lifetime (the OS drops it when the process dies)."""
        self._lock = open(self.root / LOCK, "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise DataError(f"{self.root}: another writer holds this dataset (close it first)") from None

    # -- setup -------------------------------------------------------------------
    def _check_features(self) -> None:
        info = json.loads((self.root / "meta/info.json").read_text())
        have = info["features"]
        for key, ft in self.features.items():
            if key not in have:
                raise DataError(f"{self.root}: existing dataset lacks column '{key}'; write to a new out dir")
            if tuple(have[key]["shape"]) != tuple(ft["shape"]):
                raise ShapeError(
                    f"{self.root}: column '{key}' has shape {tuple(have[key]['shape'])}, "
                    f"new episodes have {tuple(ft['shape'])}"
                )
        if info["fps"] != self.fps:
            raise DataError(f"{self.root}: dataset fps is {info['fps']}, writer was given {self.fps}")

    def _adopt(self) -> None:
        info = json.loads((self.root / "meta/info.json").read_text())
        lines = "".join(
            json.dumps({"episode_index": i, "source": "demo", "seed": None, "adopted": True}) + "\n"
            for i in range(info["total_episodes"])
        )
        _fsync_write(self.root / JOURNAL, lines)
        _fsync_write(self.root / MARKER, json.dumps({"writer": "vla", "version": 1, "adopted": True}))

    def __len__(self) -> int:
        return self._committed

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- steps -------------------------------------------------------------------
    def add_step(
        self,
        obs: dict,
        action,
        policy_action=None,
        intervention: bool = False,
        reward: float = 0.0,
        success: bool = False,
        done: bool = False,
    ) -> None:
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        policy_action = action if policy_action is None else np.asarray(policy_action, np.float32).reshape(-1)
        if action.shape != (self.action_dim,) or policy_action.shape != (self.action_dim,):
            raise ShapeError(
                f"action shape {action.shape} / policy_action {policy_action.shape}, "
                f"dataset expects ({self.action_dim},)"
            )
        if not (np.isfinite(action).all() and np.isfinite(policy_action).all()):
            raise DataError("refusing to record a NaN or infinite action")
        if TASK not in obs or not isinstance(obs[TASK], str):
            raise DataError("observation lacks its 'task' instruction string")
        frame = {TASK: obs[TASK]}
        for key in self.obs_keys:
            if key not in obs:
                raise DataError(f"observation lacks '{key}' (dataset columns: {self.obs_keys})")
            value = np.asarray(obs[key])
            want = tuple(self.features[key]["shape"])
            if value.shape != want:
                raise ShapeError(f"observation '{key}' has shape {value.shape}, dataset expects {want}")
            frame[key] = value.astype(np.uint8 if key.startswith("observation.images.") else np.float32)
        frame[ACTION] = action
        frame[POLICY_ACTION] = policy_action
        frame[INTERVENTION] = np.array([bool(intervention)])
        frame[REWARD] = np.array([reward], dtype=np.float32)
        frame[SUCCESS] = np.array([bool(success)])
        frame[DONE] = np.array([bool(done)])
        self._steps.append(frame)

    @property
    def pending_steps(self) -> int:
        return len(self._steps)

    def discard_episode(self) -> None:
        self._steps = []

    def end_episode(self, source: str, seed: int | None = None, extra: dict | None = None) -> int:
        """Save the buffered steps as one episode and make it durable. Returns its index."""
        if not is_valid_source(source):
            raise DataError(f"episode source must be 'demo', 'intervention' or 'policy:<name>', got {source!r}")
        if not self._steps:
            raise DataError("end_episode() with no steps recorded")
        steps, self._steps = self._steps, []
        index = self._committed
        entry = {
            "episode_index": index,
            "source": source,
            "seed": None if seed is None else int(seed),
            "length": len(steps),
            "success": bool(any(bool(f[SUCCESS][0]) for f in steps)),
            "interventions": int(sum(bool(f[INTERVENTION][0]) for f in steps)),
            "task": steps[0][TASK],
            **(extra or {}),
        }
        self._snapshot()
        if self._ds is None:
            self._ds = self._cls.resume(self.repo_id, root=self.root)
        ds = self._ds
        try:
            for frame in steps:
                ds.add_frame(dict(frame))  # LeRobot pops keys from the dict it is given
            ds.save_episode(parallel_encoding=False)
            _seal(ds)
        except BaseException:
            # leave nothing half-written: forget this writer object and roll back to the snapshot
            self._ds = None
            _neuter(ds)
            repair(self.root)
            raise
        _fsync_write(self.root / JOURNAL, json.dumps(entry) + "\n", append=True)
        self._committed += 1
        return index

    def _snapshot(self) -> None:
        snap = self.root / SNAPSHOT_DIR
        tmp = self.root / (SNAPSHOT_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in _REWRITTEN:
            if (self.root / name).exists():
                shutil.copy2(self.root / name, tmp / Path(name).name)
        state = {"episodes_before": self._committed, "files": _list_files(self.root)}
        _fsync_write(tmp / "state.json", json.dumps(state))
        shutil.rmtree(snap, ignore_errors=True)
        os.replace(tmp, snap)

    def close(self) -> None:
        if self._steps:
            log.warning("closing %s with %d unsaved steps: discarded", self.root, len(self._steps))
            self._steps = []
        if self._ds is not None:
            _neuter(self._ds)  # everything is sealed already; nothing may be written after
            self._ds = None
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # releases the flock
            self._lock = None


class _LastEpisode:
    """Stands in for ``meta.episodes`` after a seal: LeRobot's writer only reads ``[-1]`` and ``len``."""

    def __init__(self, row: dict):
        self.row = row

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i):
        if i != -1:
            raise IndexError("only the last episode is known to the writer")
        return self.row


def _seal(ds) -> None:
    """Close the files of the episode just saved (parquet footers), and set LeRobot's writer up
    as a fresh ``resume()`` would, without reloading all episode metadata (which costs O(episodes)).

    Every episode then gets files of its own, as after a resume. Relies on LeRobot 0.6's
    DatasetWriter / LeRobotDatasetMetadata internals (pinned in setup.cfg).
    """
    ds.writer.close_writer()
    ds.meta._close_writer()
    last = {k: (v[0] if isinstance(v, list) else v) for k, v in ds.meta.latest_episode.items()}
    ds.meta.episodes = _LastEpisode(last)
    ds.meta.latest_episode = None
    ds.writer._latest_episode = None


def _neuter(ds) -> None:
    """Stop LeRobot's finalisers (run at garbage collection) from writing anything more."""
    ds._is_finalized = True
    ds.writer._finalized = True
    ds.meta._finalized = True
