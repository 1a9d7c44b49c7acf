"""A learned success detector (RoboFuME): the last camera frame and the instruction -> success.

Why: online self-improvement needs a reward, and a real robot has no simulator to read it
from. RoboFuME trains a classifier on a few labelled rollouts and uses its verdict as the only
reward. Here the labels come from the simulator, so the classifier's agreement with the true
success can be measured on held-out rollouts (the issue asks for >= 90 %).

Data (:func:`record_labelled_rollouts`): rollouts on seeds disjoint from the demonstrations'
and the evaluation's (:data:`SUCCESS_SEED_BASE`), driven by behaviours that fail in different
ways, each frame labelled by the simulator's success flag at that frame:

- ``expert``: the scripted expert (succeeds);
- ``language_blind``: the expert pursuing a random task of the family (the block ends on the
  *wrong* target about two times in three: the hardest negatives, since only the instruction
  tells them from a success);
- ``noisy_expert``: the expert with heavy action noise, which succeeds or stalls part-way;
- ``random``: uniform random actions (fails).

Each episode gives its final frame (labelled with its outcome) and ``mid_frames`` frames drawn
from before it (all negatives: an episode ends on success, so no earlier frame has succeeded);
they teach "not yet" on scenes that look like a success about to happen.

Model (:class:`SuccessClassifier`): the policy's frozen towers and encoder
(:class:`apps.robotics.model.VisionLanguageEncoder` with no top block: EfficientNet-Lite0's
cached trunk map, MiniLM, FiLM, spatial-softmax keypoints) and a linear logit. The keypoints
say where things are, FiLM which coloured thing the instruction names, and the MLP whether
they are close enough. A saved classifier records the towers it was trained on
(:func:`tower_signature`); loading it for other towers is refused by name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from core.atomic import atomic_write, atomic_write_text

from .data import encode_trunk
from .envs import VectorEnv, tasks_for
from .model import TextEmbedder, TextFn, VisionLanguageEncoder

#: Rollout behaviours of the labelled data, in the order episodes cycle through them.
BEHAVIOURS: tuple[str, ...] = ("expert", "language_blind", "noisy_expert", "random")
#: First seed of the labelled rollouts: above every demonstration seed (collect) and every
#: evaluation seed (10^9 + i), so the classifier never sees a scene a policy is scored on.
SUCCESS_SEED_BASE = 2 * 10**9
#: Seeds between two run seeds' rollouts (more episodes than anyone records).
SEED_STRIDE = 1_000_003
#: Episode index where held-out labelled rollouts start (training ones count up from 0), so a
#: classifier trained by one command and scored by another never meets its training scenes.
HELD_OUT_INDEX = 900_000
#: Noise of ``noisy_expert``: standard deviation as a fraction of the top speed.
NOISE_FRACTION = 0.8
#: Keys of a saved :class:`LabelledFrames` file.
FRAME_KEYS = ("images", "instructions", "labels", "families", "behaviours", "final", "seeds")


def rollout_seed(seed: int, index: int) -> int:
    """The env seed of labelled episode ``index`` of run ``seed``."""
    if seed < 0 or index < 0 or index >= SEED_STRIDE:
        raise ValueError(f"seed={seed} and index={index} must be >= 0 (index < {SEED_STRIDE})")
    return SUCCESS_SEED_BASE + seed * SEED_STRIDE + index


# --------------------------------------------------------------------------- data
@dataclass
class LabelledFrames:
    """Camera frames with the instruction in force and the simulator's success label.

    Attributes:
        images: uint8 ``(N, H, W, 3)``.
        instructions: ``N`` instruction strings.
        labels: bool ``(N,)``: the simulator's success at that frame.
        families: ``N`` task families.
        behaviours: ``N`` behaviour names (:data:`BEHAVIOURS`) of the episode.
        final: bool ``(N,)``: the frame is its episode's last (what the classifier judges
            when it rewards a rollout).
        seeds: int ``(N,)``: the episode's env seed.
    """

    images: np.ndarray
    instructions: list[str]
    labels: np.ndarray
    families: list[str]
    behaviours: list[str]
    final: np.ndarray
    seeds: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3); got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        lengths = {
            "instructions": len(self.instructions),
            "labels": len(self.labels),
            "families": len(self.families),
            "behaviours": len(self.behaviours),
            "final": len(self.final),
            "seeds": len(self.seeds),
        }
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(
                f"labelled frames disagree in length: {n} images but {wrong}; every field "
                "needs one entry per frame (a file with missing frames is incomplete: record "
                "it again)"
            )
        self.labels = np.asarray(self.labels, dtype=bool)
        self.final = np.asarray(self.final, dtype=bool)
        self.seeds = np.asarray(self.seeds, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, mask: np.ndarray) -> LabelledFrames:
        """The frames where ``mask`` (bool ``(N,)``) holds."""
        idx = np.flatnonzero(mask)
        return LabelledFrames(
            images=self.images[idx],
            instructions=[self.instructions[i] for i in idx],
            labels=self.labels[idx],
            families=[self.families[i] for i in idx],
            behaviours=[self.behaviours[i] for i in idx],
            final=self.final[idx],
            seeds=self.seeds[idx],
        )

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` atomically (temp file, then rename); returns the path."""
        path = Path(path)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez_compressed(
                    handle,
                    images=self.images,
                    instructions=np.array(self.instructions, dtype=str),
                    labels=self.labels,
                    families=np.array(self.families, dtype=str),
                    behaviours=np.array(self.behaviours, dtype=str),
                    final=self.final,
                    seeds=self.seeds,
                )

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LabelledFrames:
        """Read a file written by :meth:`save`; a missing file or field is named."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"labelled rollouts {str(path)!r} not found: record them with "
                "apps.robotics.success.record_labelled_rollouts(...).save(path)"
            )
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in FRAME_KEYS if k not in data.files]
            if missing:
                raise ValueError(
                    f"labelled rollouts {str(path)!r} lack {missing} (have {sorted(data.files)}); "
                    "it was not written by LabelledFrames.save: record it again"
                )
            fields = {k: data[k] for k in FRAME_KEYS}
        try:
            return cls(
                images=fields["images"],
                instructions=[str(s) for s in fields["instructions"]],
                labels=fields["labels"],
                families=[str(s) for s in fields["families"]],
                behaviours=[str(s) for s in fields["behaviours"]],
                final=fields["final"],
                seeds=fields["seeds"],
            )
        except ValueError as err:
            raise ValueError(f"labelled rollouts {str(path)!r}: {err}") from err


def _behaviour_actions(
    behaviour: str, vec: VectorEnv, rows: np.ndarray, tasks: list[str], rngs: list
) -> np.ndarray:
    """Actions ``(len(rows), 2)`` of ``behaviour`` for the envs ``rows`` of ``vec``."""
    if behaviour == "random":
        return np.stack([rngs[i].uniform(vec.action_low, vec.action_high) for i in rows])
    pursued = [tasks[i] for i in range(vec.num_envs)]
    actions = vec.expert_actions(pursued)[rows]
    if behaviour == "noisy_expert":
        scale = NOISE_FRACTION * float(vec.action_high[0])
        actions = actions + np.stack([rngs[i].normal(0.0, scale, size=2) for i in rows])
    return actions


def record_labelled_rollouts(
    num_episodes: int,
    seed: int = 0,
    *,
    behaviours: Sequence[str] = BEHAVIOURS,
    mid_frames: int = 1,
    families: Sequence[str] | None = None,
    num_envs: int = 25,
    first_index: int = 0,
    progress: bool = True,
) -> LabelledFrames:
    """Run ``num_episodes`` episodes, cycling through ``behaviours``, and label their frames.

    Episode ``i`` (from ``first_index``; give disjoint ranges for a training and a held-out
    set) runs on :func:`rollout_seed` ``(seed, i)`` with ``behaviours[i % len]``; it
    contributes its final frame and ``mid_frames`` earlier frames (drawn from the seed).
    Deterministic given the arguments.
    """
    unknown = sorted(set(behaviours) - set(BEHAVIOURS))
    if unknown or not behaviours:
        raise ValueError(f"behaviours {unknown or '[]'}: choose from {list(BEHAVIOURS)}")
    if num_episodes < 1 or mid_frames < 0 or num_envs < 1:
        raise ValueError(
            f"num_episodes={num_episodes} and num_envs={num_envs} must be >= 1, "
            f"mid_frames={mid_frames} >= 0"
        )
    options = {"families": list(families)} if families is not None else {}
    columns: dict[str, list] = {k: [] for k in FRAME_KEYS}
    bar = tqdm(total=num_episodes, desc="labelled rollouts", unit="ep", disable=not progress)
    last_index = first_index + num_episodes
    for first in range(first_index, last_index, num_envs):
        indices = list(range(first, min(first + num_envs, last_index)))
        n = len(indices)
        vec = VectorEnv("tabletop", num_envs=n, **options)
        seeds = [rollout_seed(seed, i) for i in indices]
        obs, infos = vec.reset(seeds)
        kinds = [behaviours[i % len(behaviours)] for i in indices]
        rngs = [np.random.default_rng([s, 7]) for s in seeds]
        tasks = []
        for info, rng, kind in zip(infos, rngs, kinds, strict=True):
            if kind == "language_blind":  # a random task of the family (maybe the right one)
                family_tasks = tasks_for(info["family"])
                tasks.append(family_tasks[int(rng.integers(len(family_tasks)))])
            else:
                tasks.append(info["task"])
        frames: list[list[np.ndarray]] = [[obs["image"][i].copy()] for i in range(n)]
        while not vec.done.all():
            running = np.flatnonzero(~vec.done)
            actions = np.zeros((n, vec.action_dim), dtype=np.float32)
            for kind in set(kinds):
                rows = np.array([i for i in running if kinds[i] == kind], dtype=int)
                if len(rows):
                    actions[rows] = _behaviour_actions(kind, vec, rows, tasks, rngs)
            obs, _, _, _, infos = vec.step(actions)
            for i in running:
                frames[i].append(obs["image"][i].copy())
        for i, info in enumerate(infos):
            episode = frames[i]
            picks = [len(episode) - 1]
            if len(episode) > 1 and mid_frames:
                count = min(mid_frames, len(episode) - 1)
                picks += sorted(rngs[i].choice(len(episode) - 1, size=count, replace=False))
            for j in picks:
                last = j == len(episode) - 1
                columns["images"].append(episode[j])
                columns["instructions"].append(info["instruction"])
                columns["labels"].append(bool(info["success"]) and last)
                columns["families"].append(info["family"])
                columns["behaviours"].append(kinds[i])
                columns["final"].append(last)
                columns["seeds"].append(seeds[i])
        bar.update(n)
    bar.close()
    return LabelledFrames(
        images=np.stack(columns["images"]),
        instructions=columns["instructions"],
        labels=np.array(columns["labels"], dtype=bool),
        families=columns["families"],
        behaviours=columns["behaviours"],
        final=np.array(columns["final"], dtype=bool),
        seeds=np.array(columns["seeds"], dtype=np.int64),
    )


# --------------------------------------------------------------------------- model
def tower_signature(trunk: nn.Module, trunk_split: int, pretrained: bool) -> dict[str, Any]:
    """What a classifier's inputs depend on: the image tower, its cut and a hash of its
    trunk's weights (so a checkpoint trained on other towers is told apart)."""
    digest = hashlib.sha256()
    for name, tensor in trunk.state_dict().items():
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {
        "image_tower": "tf_efficientnet_lite0",
        "trunk_split": int(trunk_split),
        "pretrained": bool(pretrained),
        "trunk_sha256": digest.hexdigest()[:16],
    }


class SuccessClassifier(nn.Module):
    """Frozen towers + FiLM + keypoints + MLP -> one success logit per (frame, instruction).

    Args:
        trunk_split: Blocks of EfficientNet-Lite0 in the frozen trunk (its map is the input;
            no top block trains).
        pretrained: ImageNet weights (False: random, seeded by ``init_seed``).
        num_keypoints: Spatial-softmax keypoints.
        hidden_dim: Width of the MLP.
        text_tower: ``list[str] -> (B, D)`` or a :class:`TextEmbedder` (None: MiniLM).
        init_seed: Seed of a random tower.
    """

    def __init__(
        self,
        trunk_split: int = 3,
        pretrained: bool = True,
        num_keypoints: int = 32,
        hidden_dim: int = 256,
        text_tower: TextFn | TextEmbedder | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = VisionLanguageEncoder(
            pretrained=pretrained,
            trunk_split=trunk_split,
            top_blocks=0,
            num_keypoints=num_keypoints,
            feature_dim=hidden_dim,
            proprio_dim=0,
            hidden_dim=hidden_dim,
            text_tower=text_tower,
            seed=init_seed,
        )
        self.encoder.image.requires_grad_(False)
        self.logit = nn.Linear(hidden_dim, 1)
        self.config = {
            "trunk_split": int(trunk_split),
            "pretrained": bool(pretrained),
            "num_keypoints": int(num_keypoints),
            "hidden_dim": int(hidden_dim),
            "init_seed": int(init_seed),
        }

    def forward(self, image: Tensor, instructions: Sequence[str]) -> Tensor:
        """Logits ``(B,)`` of pixels ``(B, 3, H, W)`` or cached trunk features."""
        empty = torch.zeros(image.shape[0], 0)
        return self.logit(self.encoder(image, empty, list(instructions))).squeeze(-1)

    def trunk_features(self, images: np.ndarray) -> Tensor:
        """Cached-form trunk features (float16) of uint8 frames ``(N, H, W, 3)``."""
        return encode_trunk(self.encoder.image, images)

    def signature(self) -> dict[str, Any]:
        """:func:`tower_signature` of this classifier's own trunk."""
        split, pretrained = self.config["trunk_split"], self.config["pretrained"]
        return tower_signature(self.encoder.image.trunk, split, pretrained)

    @torch.no_grad()
    def probability(
        self, images: np.ndarray, instructions: Sequence[str], features: Tensor | None = None
    ) -> np.ndarray:
        """Success probabilities ``(N,)`` of uint8 frames ``(N, H, W, 3)`` (``features``:
        their :meth:`trunk_features`, when already computed)."""
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} frames but {len(instructions)} instructions")
        was = self.training
        self.eval()
        feats = self.trunk_features(np.asarray(images)) if features is None else features
        out = torch.sigmoid(self(feats.float(), list(instructions))).numpy()
        self.train(was)
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What trains: everything but the frozen image tower."""
        return [p for p in self.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- training
@dataclass
class ClassifierFit:
    """What :func:`fit_classifier` did: the loss per logged step and the validation metrics."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    validation: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def binary_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of bool predictions against bool truth (a metric
    with an empty denominator is reported as 0)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"shapes differ: predicted {predicted.shape}, truth {truth.shape}")
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = float((predicted == truth).mean()) if len(truth) else 0.0
    return {
        "accuracy": accuracy,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "count": len(truth),
    }


def fit_classifier(
    classifier: SuccessClassifier,
    train: LabelledFrames,
    val: LabelledFrames | None = None,
    *,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    val_every: int = 500,
    progress: bool = True,
    features: Tensor | None = None,
) -> ClassifierFit:
    """Train ``classifier`` with a class-balanced binary cross-entropy on ``train``.

    The trunk features are computed once (or given as ``features``, matching ``train``), so a
    step costs the FiLM, keypoints and MLP only (``val``'s too, once). AdamW with a cosine
    decay; ``val`` is scored every ``val_every`` steps and at the end.
    """
    if len(train) == 0:
        raise ValueError("no training frames: record labelled rollouts first")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps} and batch_size={batch_size} must be >= 1")
    cached = classifier.trunk_features(train.images) if features is None else features
    if len(cached) != len(train):
        raise ValueError(f"{len(cached)} cached features for {len(train)} frames")
    labels = torch.as_tensor(train.labels, dtype=torch.float32)
    positives = float(labels.sum())
    if positives in (0.0, float(len(labels))):
        raise ValueError(
            f"training frames hold {int(positives)} successes of {len(labels)}: a classifier "
            "needs both outcomes (record more episodes or other behaviours)"
        )
    pos_weight = torch.tensor((len(labels) - positives) / positives)
    scored = val is not None and len(val) > 0
    val_features = classifier.trunk_features(val.images) if scored else None
    params = classifier.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    gen = torch.Generator().manual_seed(seed)
    history = ClassifierFit()
    classifier.train()
    bar = tqdm(range(1, steps + 1), desc="success classifier", disable=not progress)
    for step in bar:
        idx = torch.randint(len(train), (batch_size,), generator=gen)
        logits = classifier(cached[idx].float(), [train.instructions[i] for i in idx.tolist()])
        loss = F.binary_cross_entropy_with_logits(logits, labels[idx], pos_weight=pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps:
            history.losses.append((step, loss.item()))
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if scored and (step % val_every == 0 or step == steps):
            scores = score_classifier(classifier, val, features=val_features)
            history.validation.append((step, scores["final"]))
            classifier.train()
    classifier.eval()
    return history


def score_classifier(
    classifier: SuccessClassifier,
    frames: LabelledFrames,
    threshold: float = 0.5,
    features: Tensor | None = None,
) -> dict[str, Any]:
    """The classifier against the simulator: :func:`binary_metrics` on every frame (``all``),
    on final frames (``final``: what a rollout's reward uses), per family and per behaviour
    (final frames). ``features``: the frames' trunk features, when already computed."""
    prob = classifier.probability(frames.images, frames.instructions, features)
    predicted = prob >= threshold
    out: dict[str, Any] = {
        "all": binary_metrics(predicted, frames.labels),
        "final": binary_metrics(predicted[frames.final], frames.labels[frames.final]),
    }
    for key, values in (("family", frames.families), ("behaviour", frames.behaviours)):
        groups = {}
        for name in sorted(set(values)):
            mask = np.array([v == name for v in values]) & frames.final
            groups[name] = binary_metrics(predicted[mask], frames.labels[mask])
        out[key] = groups
    return out


# --------------------------------------------------------------------------- files
def save_classifier(path: str | Path, classifier: SuccessClassifier) -> Path:
    """Save weights, config and the towers' :func:`tower_signature` atomically."""
    config = classifier.config
    payload = {
        "format": "robotics-success-classifier/1",
        "config": dict(config),
        "towers": classifier.signature(),
        "state_dict": {k: v for k, v in classifier.state_dict().items() if ".image." not in k},
    }
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_classifier(
    path: str | Path,
    *,
    trunk_split: int | None = None,
    pretrained: bool | None = None,
    text_tower: TextFn | TextEmbedder | None = None,
) -> SuccessClassifier:
    """A classifier saved by :func:`save_classifier`, checked against its towers.

    ``trunk_split`` / ``pretrained`` (default: the file's) are the towers the caller will feed
    it; a file trained on other towers, or whose trunk weights no longer hash the same, is
    refused with a message naming the file, both towers and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"success classifier {str(path)!r} not found")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != "robotics-success-classifier/1":
        raise ValueError(
            f"{str(path)!r} is not a success classifier saved by "
            "apps.robotics.success.save_classifier"
        )
    config, saved = dict(payload["config"]), payload["towers"]
    if trunk_split is not None:
        config["trunk_split"] = int(trunk_split)
    if pretrained is not None:
        config["pretrained"] = bool(pretrained)
    classifier = SuccessClassifier(text_tower=text_tower, **config)
    current = classifier.signature()
    if current != saved:
        raise ValueError(
            f"success classifier {str(path)!r} was trained on towers {saved}, but the towers "
            f"here are {current}: train a classifier for these towers (or pass the "
            "trunk_split / pretrained it was trained with)"
        )
    missing, unexpected = classifier.load_state_dict(payload["state_dict"], strict=False)
    missing = [k for k in missing if ".image." not in k]
    if missing or unexpected:
        raise ValueError(
            f"success classifier {str(path)!r} does not fit this model: missing {missing}, "
            f"unexpected {unexpected}"
        )
    return classifier.eval()


# --------------------------------------------------------------------------- command line
def _table(scores: dict[str, Any]) -> str:
    """A markdown table of final-frame metrics: overall, per family, per behaviour."""
    rows = [("all episodes", scores["final"])]
    rows += [(f"family `{k}`", v) for k, v in scores["family"].items()]
    rows += [(f"behaviour `{k}`", v) for k, v in scores["behaviour"].items()]
    lines = ["| episodes | n | accuracy | precision | recall |", "|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['count']} | {m['accuracy']:.3f} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} |"
        )
    return "\n".join(lines)


def run(
    out: str | Path,
    episodes: int = 3000,
    val_episodes: int = 300,
    seed: int = 0,
    steps: int = 4000,
    trunk_split: int = 3,
    mid_frames: int = 2,
    progress: bool = True,
    text_tower: TextFn | TextEmbedder | None = None,
) -> dict[str, Any]:
    """Record labelled rollouts, train a classifier, score it on held-out rollouts.

    Writes ``classifier.pt``, ``metrics.json`` and ``report.md`` under ``out``; returns the
    metrics. Held-out episodes are indices from :data:`HELD_OUT_INDEX` of the same seed
    (other scenes).
    """
    out = Path(out)
    torch.manual_seed(seed)
    train = record_labelled_rollouts(episodes, seed, mid_frames=mid_frames, progress=progress)
    held_out = record_labelled_rollouts(
        val_episodes, seed, mid_frames=mid_frames, first_index=HELD_OUT_INDEX, progress=progress
    )
    classifier = SuccessClassifier(trunk_split=trunk_split, text_tower=text_tower, init_seed=seed)
    train_features = classifier.trunk_features(train.images)
    fit = fit_classifier(
        classifier, train, steps=steps, seed=seed, progress=progress, features=train_features
    )
    metrics = {
        "seed": seed,
        "train_episodes": episodes,
        "held_out_episodes": val_episodes,
        "train_frames": len(train),
        "train_success_fraction": float(train.labels.mean()),
        "held_out_success_fraction": float(held_out.labels[held_out.final].mean()),
        "train": score_classifier(classifier, train, features=train_features),
        "held_out": score_classifier(classifier, held_out),
        "losses": fit.losses,
        "config": classifier.config,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_classifier(out / "classifier.pt", classifier)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    final = metrics["held_out"]["final"]
    report = [
        "# Success classifier",
        "",
        f"Final frame + instruction -> success, on frozen towers (trunk split {trunk_split}). "
        f"Trained on {episodes} labelled rollouts ({len(train)} frames), scored against the "
        f"simulator on {val_episodes} held-out rollouts (seed {seed}).",
        "",
        f"Held-out agreement with the true success: **{final['accuracy']:.3f}** "
        f"(precision {final['precision']:.3f}, recall {final['recall']:.3f}).",
        "",
        _table(metrics["held_out"]),
        "",
        f"Command: `python -m apps.robotics.success --episodes {episodes} --val-episodes "
        f"{val_episodes} --seed {seed} --steps {steps} --trunk-split {trunk_split} "
        f"--mid-frames {mid_frames} --out {out}`",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(report))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m apps.robotics.success``: train and score a success classifier."""
    parser = argparse.ArgumentParser(
        prog="python -m apps.robotics.success",
        description="Train a success classifier (final frame + instruction -> success) on "
        "labelled rollouts of the tabletop suite and score it against the simulator.",
    )
    parser.add_argument("--episodes", type=int, default=3000, help="training rollouts")
    parser.add_argument("--val-episodes", type=int, default=300, help="held-out rollouts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000, help="training steps")
    parser.add_argument("--trunk-split", type=int, default=3, help="EfficientNet blocks frozen")
    parser.add_argument(
        "--mid-frames", type=int, default=2, help="earlier frames per episode (negatives)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/robotics_success"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        metrics = run(
            args.out,
            args.episodes,
            args.val_episodes,
            args.seed,
            args.steps,
            args.trunk_split,
            args.mid_frames,
            progress=not args.quiet,
        )
    except ValueError as err:
        parser.error(str(err))
    final = metrics["held_out"]["final"]
    print(
        f"held-out agreement {final['accuracy']:.3f} (precision {final['precision']:.3f}, "
        f"recall {final['recall']:.3f}) over {final['count']} rollouts; report: "
        f"{args.out / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "BEHAVIOURS",
    "HELD_OUT_INDEX",
    "SUCCESS_SEED_BASE",
    "ClassifierFit",
    "LabelledFrames",
    "SuccessClassifier",
    "binary_metrics",
    "fit_classifier",
    "load_classifier",
    "record_labelled_rollouts",
    "rollout_seed",
    "save_classifier",
    "score_classifier",
    "tower_signature",
]
