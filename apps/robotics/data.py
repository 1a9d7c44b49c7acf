"""The robotics data module: LeRobotDataset frames as (image, proprio, instruction, action chunk).

``data.source`` picks where the demonstrations come from, and both take one code path:

- ``embedded``: scripted-expert demonstrations of the tabletop suite, recorded once by
  :func:`apps.robotics.collect.collect_demonstrations` into a ``core.cache`` folder keyed by
  (episodes, families, seed, image size), then read from there with
  :func:`apps.robotics.dataset.read_dataset`;
- ``lerobot``: any LeRobotDataset v3.0 (or v2.0/v2.1) directory on disk, ``data.root``.

**Samples.** One per frame of the selected episodes::

    image        float16 (C, h, w) frozen trunk features ("trunk") or uint8 (3, H, W) ("pixels")
    proprio      float32 (state_dim,)            min/max-normalised to [-1, 1]
    instruction  str                             the episode's task string
    action       float32 (chunk_size, action_dim) q01/q99-normalised, clipped to [-1, 1]: the
                                                 frame's action and the next chunk_size - 1 of
                                                 the same episode (the last one repeated past
                                                 its end)
    action_pad   bool (chunk_size,)              True where the action was repeated (padding)
    episode_index int

:func:`collate` stacks them and keeps the instructions as a list of strings.

**Trunk features.** ``image_features="trunk"`` runs the frozen EfficientNet-Lite0 trunk
(:func:`core.towers.efficientnet_lite0`, cut before block ``trunk_split``) over every frame
once and caches the map as float16 (``core.cache``, kind ``trunk``, keyed by the dataset's
:func:`dataset_fingerprint`, the camera, the selected episodes, the split and whether the
trunk is ImageNet-pretrained or randomly initialised from ``seed``). A policy must compute the
same features from the env's pixels at evaluation: :func:`build_trunk` and
:func:`encode_trunk` with :attr:`RoboticsDataModule.trunk_config` do exactly that.

**Normalisation** comes from the dataset's ``meta/stats.json`` (:class:`~.normalize.Normalizer`);
:meth:`RoboticsDataModule.state_dict` holds it as plain lists so Lightning stores it in the
checkpoint. **Split**: ``val_fraction`` of the episodes (at least one when there are two or
more), drawn with ``seed``, are held out for the offline validation loss (val and test
loaders); closed-loop evaluation lives elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from apps.robotics.collect import collect_demonstrations
from apps.robotics.dataset import ACTION, LeRobotDataset, read_dataset
from apps.robotics.dataset.stats import vector_stats
from apps.robotics.envs.instructions import FAMILIES, check_family, spec_of_instruction
from apps.robotics.normalize import Normalizer, check_within_stats
from core.cache import cached, cached_dir, config_hash
from core.towers import SplitEncoder, efficientnet_lite0, normalize_pixels

__all__ = [
    "CACHE_APP",
    "IMAGE_FEATURES",
    "SOURCES",
    "ChunkDataset",
    "RoboticsDataModule",
    "build_trunk",
    "collate",
    "dataset_fingerprint",
    "embedded_dataset",
    "encode_trunk",
    "family_of",
]

log = logging.getLogger(__name__)

#: The values of ``data.source``.
SOURCES = ("embedded", "lerobot")
#: The values of ``data.image_features``.
IMAGE_FEATURES = ("pixels", "trunk")
#: The app's folder of the shared cache.
CACHE_APP = "robotics"
#: Frames decoded (PNG) per step of the trunk encoding, and images per trunk forward pass.
_DECODE_CHUNK = 512
_ENCODE_BATCH = 64


# ----------------------------------------------------------------------------- helpers
def dataset_fingerprint(root: str | Path) -> str:
    """A short hash identifying a dataset directory's contents, cheaply.

    Hashes every file under ``meta/`` (info, statistics, tasks, episode tables: the
    statistics alone change with any change of the actions or images) and the relative path
    and size of every data file, so a multi-gigabyte dataset is fingerprinted without
    reading its frames.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in (root / "meta").rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    for path in sorted(p for p in (root / "data").rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\0".encode())
    return digest.hexdigest()[:16]


def build_trunk(split: int = 2, pretrained: bool = True, init_seed: int = 0) -> SplitEncoder:
    """EfficientNet-Lite0 cut before block ``split``: ImageNet weights, or (``pretrained``
    False) a random initialisation drawn from ``init_seed`` (the global generators are left
    as they were), for the pretrained-vs-random ablation."""
    if pretrained:
        return efficientnet_lite0(split=split)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return efficientnet_lite0(split=split, weights=None)


@torch.inference_mode()
def encode_trunk(
    encoder: SplitEncoder, images: np.ndarray | Tensor, batch_size: int = _ENCODE_BATCH
) -> Tensor:
    """Trunk features, float16 ``(N, C, h, w)``, of uint8 RGB images ``(N, H, W, 3)``.

    The same computation as the cache (``encoder.features(normalize_pixels(rgb))``), so a
    policy fed the env's pixels sees what it was trained on.
    """
    pixels = torch.as_tensor(images)
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(
            f"encode_trunk takes uint8 RGB images (N, H, W, 3); got {pixels.dtype} "
            f"{tuple(pixels.shape)}"
        )
    out = []
    for i in range(0, len(pixels), batch_size):
        rgb = pixels[i : i + batch_size].permute(0, 3, 1, 2).float().div_(255.0)
        out.append(encoder.features(normalize_pixels(rgb)).half())
    if not out:
        c = encoder.trunk_channels
        return torch.empty((0, c, 0, 0), dtype=torch.float16)
    return torch.cat(out)


def family_of(instruction: str) -> str | None:
    """The tabletop family an instruction (any training template or paraphrase, filled in)
    belongs to, or None for text the suite does not produce."""
    spec = spec_of_instruction(instruction)
    return None if spec is None else spec.family


def embedded_dataset(
    episodes: int,
    families: Sequence[str] | None = None,
    seed: int = 0,
    image_size: int = 96,
    cache_dir: str | Path | None = None,
    action_noise: float = 0.0,
) -> Path:
    """The embedded demonstrations' LeRobotDataset folder, recorded on the first call.

    The dataset lives at ``<cache entry>/dataset`` (``core.cache.cached_dir``, kind
    ``demos``, keyed by the arguments), so every later run reads it from disk.
    """
    families = list(FAMILIES if families is None else families)
    config = {
        "kind": "robotics-demos",
        "version": 2,  # 2: the expert goes round a block the same way when in front of it
        "episodes": int(episodes),
        "families": families,
        "seed": int(seed),
        "image_size": int(image_size),
    }
    if action_noise:  # absent at 0, so the noiseless datasets keep their cache entries
        config["action_noise"] = float(action_noise)

    def build(folder: Path) -> None:
        collect_demonstrations(
            folder / "dataset",
            episodes,
            families=families,
            seed=seed,
            image_size=image_size,
            action_noise=action_noise,
        )

    return cached_dir("demos", config, build, app=CACHE_APP, cache_dir=cache_dir) / "dataset"


# ----------------------------------------------------------------------------- samples
class ChunkDataset(Dataset):
    """Frames of some episodes as training samples (see the module docstring).

    Args:
        images: Per frame of the module's selection: trunk features ``(M, C, h, w)`` float16
            or pixels ``(M, 3, H, W)`` uint8.
        proprio: ``(M, state_dim)`` normalised proprioception.
        actions: ``(M, action_dim)`` normalised actions.
        episode_end: ``(M,)`` one past the last frame of each frame's episode (local index).
        episode_index: ``(M,)`` each frame's ``episode_index``.
        instructions: ``(M,)`` index into ``tasks`` per frame.
        tasks: The instruction strings.
        frames: The local frame indices this set serves.
        chunk_size: Actions per sample.
    """

    def __init__(
        self,
        images: Tensor,
        proprio: Tensor,
        actions: Tensor,
        episode_end: np.ndarray,
        episode_index: np.ndarray,
        instructions: np.ndarray,
        tasks: Sequence[str],
        frames: np.ndarray,
        chunk_size: int,
    ) -> None:
        self.images, self.proprio, self.actions = images, proprio, actions
        self.episode_end, self.episode_index = episode_end, episode_index
        self.instructions, self.tasks = instructions, list(tasks)
        self.frames, self.chunk_size = np.asarray(frames, dtype=np.int64), int(chunk_size)
        self._offsets = np.arange(self.chunk_size)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, item: int) -> dict[str, Any]:
        frame = int(self.frames[item])
        end = int(self.episode_end[frame])
        steps = frame + self._offsets
        pad = steps >= end
        steps = np.minimum(steps, end - 1)
        return {
            "image": self.images[frame],
            "proprio": self.proprio[frame],
            "instruction": self.tasks[int(self.instructions[frame])],
            "action": self.actions[torch.from_numpy(steps)],
            "action_pad": torch.from_numpy(pad),
            "episode_index": int(self.episode_index[frame]),
        }


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch: tensors gain a batch axis, ``instruction`` stays a list of
    strings, ``episode_index`` becomes an int64 tensor."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "proprio": torch.stack([s["proprio"] for s in samples]),
        "instruction": [s["instruction"] for s in samples],
        "action": torch.stack([s["action"] for s in samples]),
        "action_pad": torch.stack([s["action_pad"] for s in samples]),
        "episode_index": torch.tensor([s["episode_index"] for s in samples], dtype=torch.int64),
    }


# ----------------------------------------------------------------------------- module
class RoboticsDataModule(pl.LightningDataModule):
    """Demonstrations for a vision-language-action policy (see the module docstring).

    Args:
        source: ``"embedded"`` (scripted-expert demos of the tabletop suite, recorded once into
            the cache) or ``"lerobot"`` (a LeRobotDataset directory, ``root``).
        root: The LeRobotDataset v3.0 (or v2.0/v2.1) directory of source ``lerobot``: the
            folder holding ``meta/`` and ``data/``.
        episodes: Embedded: how many demonstrations to record. Lerobot: use the first
            ``episodes`` episodes (after the ``families`` filter); 0 or None uses them all.
        families: Embedded: the task families to record (default: all). Lerobot: keep only
            episodes whose instruction belongs to these tabletop families (an instruction
            the suite does not produce is then an error); None keeps every episode.
        seed: Seeds the embedded recording, the train/val episode split and the random
            initialisation of the trunk when ``pretrained_trunk`` is False.
        camera_key: The image feature the policy sees.
        state_key: The proprioception feature (min/max-normalised).
        chunk_size: Actions per sample (the frame's and the following ones).
        val_fraction: Fraction of episodes held out for the offline validation loss.
        batch_size: Batch size of every loader.
        num_workers: DataLoader worker processes.
        image_features: ``"trunk"`` (frozen EfficientNet-Lite0 trunk map, float16, computed
            once and cached) or ``"pixels"`` (uint8 images, channels first).
        trunk_split: The block before which the trunk is cut (2: a 24-channel map at a
            quarter of the resolution, 24 x 24 for 96 px images).
        pretrained_trunk: ImageNet weights (True) or a random initialisation from ``seed``
            (False, the ImageNet-vs-random ablation).
        image_size: Camera resolution of the embedded recording (square, pixels).
        demo_noise: Embedded: standard deviation of the Gaussian noise on the expert's
            executed actions while recording (DART, ``apps.robotics.collect``; the clean
            actions are the labels), in table units per second; 0 records the plain expert.
        cache_dir: Folder for the cache entries (demos, trunk features) instead of
            ``<cache root>/robotics`` (``core.cache``; the root is
            ``$SPECIALIST_FINETUNERS_CACHE`` or ``~/.cache/specialist-finetuners``).
    """

    def __init__(
        self,
        source: str = "embedded",
        root: str | None = None,
        episodes: int | None = 200,
        families: list[str] | None = None,
        seed: int = 0,
        camera_key: str = "observation.images.top",
        state_key: str = "observation.state",
        chunk_size: int = 8,
        val_fraction: float = 0.1,
        batch_size: int = 64,
        num_workers: int = 0,
        image_features: str = "trunk",
        trunk_split: int = 2,
        pretrained_trunk: bool = True,
        image_size: int = 96,
        demo_noise: float = 0.0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source={source!r} must be one of {list(SOURCES)}")
        if source == "lerobot" and not root:
            raise ValueError(
                "data.source='lerobot' reads a LeRobotDataset from disk: set data.root to its "
                "folder (the one holding meta/ and data/), or record one with "
                "python -m apps.robotics.collect --episodes N --out DIR"
            )
        if source == "embedded" and (not episodes or episodes < 1):
            raise ValueError(
                f"data.episodes={episodes!r}: the embedded source records that many "
                "demonstrations; give a positive number"
            )
        if episodes is not None and episodes < 0:
            raise ValueError(f"data.episodes={episodes} must be >= 0 (0 or null: all)")
        if image_features not in IMAGE_FEATURES:
            raise ValueError(
                f"data.image_features={image_features!r} must be one of {list(IMAGE_FEATURES)}"
            )
        if chunk_size < 1:
            raise ValueError(f"data.chunk_size={chunk_size} must be >= 1")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction} must lie in [0, 1)")
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1")
        if families is not None:
            if isinstance(families, str):
                families = [families]
            try:
                families = [check_family(f) for f in families]
            except ValueError as err:
                raise ValueError(f"data.families: {err}") from err
            if not families:
                raise ValueError(f"data.families is empty: name some of {list(FAMILIES)}")
        self.source, self.root = source, root
        self.episodes, self.families, self.seed = episodes, families, int(seed)
        self.camera_key, self.state_key = camera_key, state_key
        self.chunk_size, self.val_fraction = int(chunk_size), float(val_fraction)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.image_features = image_features
        self.trunk_split, self.pretrained_trunk = int(trunk_split), bool(pretrained_trunk)
        self.image_size, self.cache_dir = int(image_size), cache_dir
        if not demo_noise >= 0:
            raise ValueError(f"data.demo_noise={demo_noise} must be >= 0 (table units/s)")
        self.demo_noise = float(demo_noise)
        #: Seconds spent in each stage of ``setup`` (collect, read, decode or encode).
        self.timings: dict[str, float] = {}
        self._ready = False
        self._restored: Normalizer | None = None

    # ------------------------------------------------------------------ public state
    def _ensure(self) -> None:
        if not self._ready:
            self.setup()

    @property
    def dataset(self) -> LeRobotDataset:
        """The LeRobotDataset read from disk."""
        self._ensure()
        return self._dataset

    @property
    def dataset_root(self) -> Path:
        """The dataset's folder (for the embedded source, inside the cache)."""
        self._ensure()
        return self._dataset.root

    @property
    def fingerprint(self) -> str:
        """:func:`dataset_fingerprint` of the dataset directory."""
        self._ensure()
        return self._fingerprint

    @property
    def normalizer(self) -> Normalizer:
        """Action / proprio normalisation from the dataset's statistics (or the checkpoint's)."""
        self._ensure()
        return self._normalizer

    @property
    def tasks(self) -> list[str]:
        """The instruction strings of the selected episodes, in first-seen order."""
        self._ensure()
        return list(self._tasks)

    @property
    def train_episodes(self) -> list[int]:
        """``episode_index`` of the training episodes."""
        self._ensure()
        return list(self._train_episodes)

    @property
    def val_episodes(self) -> list[int]:
        """``episode_index`` of the held-out episodes (validation loss)."""
        self._ensure()
        return list(self._val_episodes)

    @property
    def action_dim(self) -> int:
        self._ensure()
        return self._normalizer.action_dim

    @property
    def state_dim(self) -> int:
        self._ensure()
        return self._normalizer.state_dim

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One sample's ``image`` shape: ``(C, h, w)`` trunk features or ``(3, H, W)`` pixels."""
        self._ensure()
        return tuple(self._images.shape[1:])

    @property
    def trunk_config(self) -> dict[str, Any]:
        """:func:`build_trunk`'s arguments for the trunk the features came from."""
        return {
            "split": self.trunk_split,
            "pretrained": self.pretrained_trunk,
            "init_seed": self.seed,
        }

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Record the embedded demonstrations into the cache (once, main process)."""
        if self.source == "embedded":
            self._embedded_root()

    def setup(self, stage: str | None = None) -> None:
        """Read the dataset, check it, normalise, split and prepare the images (once)."""
        if self._ready:
            return
        began = time.perf_counter()
        root = self._embedded_root() if self.source == "embedded" else Path(self.root)
        self.timings["collect"] = time.perf_counter() - began

        began = time.perf_counter()
        ds = read_dataset(root)
        self._check_features(ds)
        self._fingerprint = dataset_fingerprint(root)
        selected = self._select(ds)
        self._normalizer = self._restored or self._build_normalizer(ds)
        self.timings["read"] = time.perf_counter() - began

        frames = np.concatenate([np.asarray(e.frames) for e in selected])
        lengths = np.array([e.length for e in selected], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        episode_end = np.repeat(starts + lengths, lengths)
        episode_index = np.repeat([e.episode_index for e in selected], lengths)
        task_index = ds.column("task_index")[frames]
        tasks = list(dict.fromkeys(ds.tasks[int(i)] for i in task_index))
        local_task = {ds.task_to_index[t]: i for i, t in enumerate(tasks)}
        instructions = np.array([local_task[int(i)] for i in task_index], dtype=np.int64)
        began = time.perf_counter()
        images = self._images_for(ds, selected, frames)
        self.timings[self.image_features] = time.perf_counter() - began

        order = np.random.default_rng([self.seed, 7]).permutation(len(selected))
        val_set = {selected[i].episode_index for i in order[: self._val_count(len(selected))]}
        self._dataset, self._tasks, self._images = ds, tasks, images
        self._train_episodes = [e.episode_index for e in selected if e.episode_index not in val_set]
        self._val_episodes = [e.episode_index for e in selected if e.episode_index in val_set]
        self._frames = {
            "frames": frames,
            "episode_end": episode_end,
            "episode_index": episode_index,
            "instructions": instructions,
            "is_val": np.isin(episode_index, list(val_set)),
        }
        self._make_sets()
        self._ready = True
        log.info(
            "robotics data: %d episodes (%d train, %d val), %d frames, %d tasks from %s; "
            "timings %s",
            len(selected),
            len(self._train_episodes),
            len(self._val_episodes),
            len(frames),
            len(tasks),
            root,
            {k: round(v, 2) for k, v in self.timings.items()},
        )

    def train_dataloader(self) -> DataLoader:
        self._ensure()
        gen = torch.Generator().manual_seed(torch.initial_seed())
        return self._loader(self._sets["train"], shuffle=True, generator=gen)

    def val_dataloader(self) -> DataLoader:
        self._ensure()
        return self._loader(self._sets["val"])

    def test_dataloader(self) -> DataLoader:
        """The held-out episodes again (offline loss; closed-loop success is elsewhere)."""
        return self.val_dataloader()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to use the policy without the data: the normaliser (plain
        lists), the tasks, the trunk and the dataset's fingerprint."""
        if not self._ready and self._restored is None:
            return {}
        normalizer = self._normalizer if self._ready else self._restored
        out: dict[str, Any] = {"normalizer": normalizer.to_dict()}
        if self._ready:
            out |= {
                "tasks": list(self._tasks),
                "fingerprint": self._fingerprint,
                "trunk": self.trunk_config,
                "image_features": self.image_features,
                "chunk_size": self.chunk_size,
                "camera_key": self.camera_key,
                "state_key": self.state_key,
            }
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the checkpoint's normaliser (used instead of recomputing it)."""
        if "normalizer" in state_dict:
            self._restored = Normalizer.from_dict(state_dict["normalizer"])
            if self._ready and self._restored.to_dict() != self._normalizer.to_dict():
                self._normalizer = self._restored
                self._make_sets()  # the samples follow the checkpoint's normalisation

    # ------------------------------------------------------------------ internals
    def _loader(self, ds: Dataset, shuffle: bool = False, generator=None) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def _embedded_root(self) -> Path:
        return embedded_dataset(
            int(self.episodes),
            self.families,
            seed=self.seed,
            image_size=self.image_size,
            cache_dir=self.cache_dir,
            action_noise=self.demo_noise,
        )

    def _check_features(self, ds: LeRobotDataset) -> None:
        purpose = "the robotics data module (data.camera_key, data.state_key and the action)"
        ds.require([self.camera_key, self.state_key, ACTION], purpose=purpose)
        spec = ds.features[self.camera_key]
        if spec["dtype"] not in ("image", "video"):
            raise ValueError(
                f"{ds.root / 'meta/info.json'}: data.camera_key={self.camera_key!r} has dtype "
                f"{spec['dtype']!r}, not an image; its cameras are {ds.camera_keys}"
            )
        if spec["dtype"] == "image" and tuple(spec["shape"])[-1] != 3:
            raise ValueError(
                f"{ds.root / 'meta/info.json'}: camera {self.camera_key!r} has shape "
                f"{tuple(spec['shape'])}; the image tower needs RGB (height, width, 3)"
            )
        for key in (self.state_key, ACTION):
            spec = ds.features[key]
            if spec["dtype"] in ("image", "video", "string") or len(spec["shape"]) != 1:
                raise ValueError(
                    f"{ds.root / 'meta/info.json'}: {key!r} must be a numeric vector, got "
                    f"dtype {spec['dtype']!r} shape {tuple(spec['shape'])}"
                )

    def _select(self, ds: LeRobotDataset) -> list:
        episodes = list(ds.episodes)
        if self.source == "lerobot" and self.families is not None:
            keep = []
            for e in episodes:
                task = ds.task(e.dataset_from_index)
                family = family_of(task)
                if family is None:
                    raise ValueError(
                        f"{ds.root}: episode {e.episode_index} has the task {task!r}, which is "
                        "not an instruction of the tabletop suite, so data.families cannot "
                        "filter it; leave data.families unset (null) to use every episode"
                    )
                if family in self.families:
                    keep.append(e)
            if not keep:
                raise ValueError(
                    f"{ds.root}: no episode belongs to data.families={self.families}; "
                    "choose families the dataset holds or leave data.families unset"
                )
            episodes = keep
        if self.source == "lerobot" and self.episodes:
            if self.episodes > len(episodes):
                log.warning(
                    "robotics data: data.episodes=%d but %s holds %d (after the families "
                    "filter); using all of them",
                    self.episodes,
                    ds.root,
                    len(episodes),
                )
            episodes = episodes[: self.episodes]
        return episodes

    def _build_normalizer(self, ds: LeRobotDataset) -> Normalizer:
        source = str(ds.root / ds.stats_source) if ds.stats_source else str(ds.root)
        stats = dict(ds.stats)
        needs = {ACTION: ("min", "max", "q01", "q99"), self.state_key: ("min", "max")}
        for key, needed in needs.items():
            have = stats.get(key, {})
            missing = [s for s in needed if s not in have]
            if missing:
                log.warning(
                    "robotics data: %s has no %s statistics %s; computing them from the data "
                    "(apps.robotics.dataset.recompute_stats writes them to meta/stats.json)",
                    source,
                    key,
                    missing,
                )
                values = ds.column(key)
                stats[key] = {**vector_stats(values.reshape(len(values), -1)), **have}
        normalizer = Normalizer.from_stats(
            stats,
            action_key=ACTION,
            state_key=self.state_key,
            action_dim=int(ds.features[ACTION]["shape"][0]),
            state_dim=int(ds.features[self.state_key]["shape"][0]),
            source=source,
        )
        check_within_stats(ds.column(ACTION), stats, ACTION, source)
        check_within_stats(ds.column(self.state_key), stats, self.state_key, source)
        return normalizer

    def _make_sets(self) -> None:
        """The train / val sets from the selected frames, normalised by ``_normalizer``."""
        f, ds = self._frames, self._dataset
        proprio = self._normalizer.normalize_state(ds.column(self.state_key)[f["frames"]])
        actions = self._normalizer.normalize_action(ds.column(ACTION)[f["frames"]])
        arrays = (
            self._images,
            torch.from_numpy(np.ascontiguousarray(proprio, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(actions, dtype=np.float32)),
            f["episode_end"],
            f["episode_index"],
            f["instructions"],
            self._tasks,
        )
        self._sets = {
            "train": ChunkDataset(*arrays, np.flatnonzero(~f["is_val"]), self.chunk_size),
            "val": ChunkDataset(*arrays, np.flatnonzero(f["is_val"]), self.chunk_size),
        }

    def _val_count(self, n: int) -> int:
        if self.val_fraction <= 0 or n < 2:
            return 0
        return min(max(1, round(n * self.val_fraction)), n - 1)

    def _images_for(self, ds: LeRobotDataset, selected: list, frames: np.ndarray) -> Tensor:
        if self.image_features == "pixels":
            pixels = ds.images(self.camera_key, frames)
            return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        selection = config_hash({"episodes": [e.episode_index for e in selected]})
        config = {
            "kind": "robotics-trunk",
            "version": 1,
            "fingerprint": self._fingerprint,
            "camera_key": self.camera_key,
            "episodes": selection,
            "frames": len(frames),
            "split": self.trunk_split,
            "pretrained": self.pretrained_trunk,
            "init_seed": None if self.pretrained_trunk else self.seed,
        }

        def build() -> dict[str, Tensor]:
            encoder = build_trunk(**self.trunk_config)
            parts = []
            for i in tqdm(
                range(0, len(frames), _DECODE_CHUNK),
                desc="trunk features",
                unit="chunk",
                leave=False,
            ):
                parts.append(
                    encode_trunk(encoder, ds.images(self.camera_key, frames[i : i + _DECODE_CHUNK]))
                )
            return {"features": torch.cat(parts)}

        return cached("trunk", config, build, app=CACHE_APP, cache_dir=self.cache_dir)["features"]
