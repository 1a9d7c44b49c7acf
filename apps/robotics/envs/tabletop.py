"""The embedded default task suite: a language-conditioned 2-D tabletop with pymunk physics.

Why this task: it runs headless on any CPU at hundreds of controlled steps per second, a
scripted expert solves it from privileged state (so demonstrations cost nothing), and every
layout offers several equally plausible goals told apart only by a colour word, so the
instruction is necessary (see ``instructions.py`` for the families and their wording).

World and camera
    The table is ``WORLD`` x ``WORLD`` = 96 x 96 units, seen by one top-down orthographic camera
    (``observation.images.top``) at ``image_size`` (96) pixels, so by default one unit is one
    pixel: x is the image column and y the image row (y points down the image).

Bodies
    A round pusher (the end effector, radius ``PUSHER_RADIUS`` = 4, kinematic: it moves
    exactly at the commanded velocity and cannot be pushed back), square blocks (side 10,
    dynamic, quasi-static: ``damping = 0`` removes all velocity each physics step, so a block
    moves only while pushed, like a block with high table friction), walls at the table edge.
    Targets and the zone are flat markings: blocks slide over them.

Control
    ``FPS`` = 10 control steps per second, each ``SUBSTEPS`` = 10 physics steps of 0.01 s.
    The action is the pusher's planar velocity ``(vx, vy)`` in table units per second, clipped
    per axis to ``[-MAX_SPEED, MAX_SPEED]`` = ``[-40, 40]`` (4 units, i.e. 4 pixels, per step at
    most); the pusher is also kept on the table.

State (privileged, ``STATE_NAMES``, float32, table units)
    ``pusher.x, pusher.y`` (the robot's own position: proprioception), then the centre of every
    object the suite can hold, in a fixed order: ``block`` (the neutral block of
    ``which_target``), ``red_block``, ``green_block``, ``blue_block``, ``red_target``,
    ``green_target``, ``blue_target``, ``zone``, each as ``.x, .y``: 18 numbers. An object
    absent from the episode's scene reads ``(0, 0)``, a point no present object can occupy
    (every centre stays at least ``BLOCK_HALF`` from the walls).

Success (geometric; the episode terminates on success, reward 1.0 then, else 0.0)
    ``which_target``: the block's centre within ``SUCCESS_RADIUS["which_target"]`` = 6 of the
    named target's centre (target disc radius 9). ``which_object``: the named block's centre
    within 11 of the zone's centre (zone radius 16, so the block lies inside the ring).
    ``ordering``: both blocks inside the zone (within 11) at once, the first named block having
    entered it before the second ever did (once the second block is in the zone while the
    first has never been, the episode can no longer succeed: pushing the wrong one first, or
    knocking the first out and back, does not count). ``max_steps`` (120) steps without
    success truncate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pymunk

from apps.robotics.envs.base import EpisodeEnv
from apps.robotics.envs.instructions import (
    COLOURS,
    FAMILIES,
    TASK_SPECS,
    TaskSpec,
    check_family,
    instruction_for,
    parse_task,
)
from apps.robotics.envs.render import Disc, Square, rasterize

WORLD = 96.0
BLOCK_HALF = 5.0
PUSHER_RADIUS = 4.0
TARGET_RADIUS = 9.0
ZONE_RADIUS = 16.0
#: Centre-to-goal distance that counts as success, per family (see the module docstring).
SUCCESS_RADIUS: dict[str, float] = {"which_target": 6.0, "which_object": 11.0, "ordering": 11.0}
MAX_SPEED = 40.0
FPS = 10
SUBSTEPS = 10
MAX_STEPS = 120
IMAGE_SIZE = 96

#: Corner slots that targets (``which_target``) or blocks (the other families) are shuffled over.
CORNER_SLOTS: tuple[tuple[float, float], ...] = (
    (26.0, 26.0),
    (70.0, 26.0),
    (26.0, 70.0),
    (70.0, 70.0),
)
CORNER_JITTER = 5.0
CENTRE_JITTER = 6.0
#: The pusher starts at least this far from every block centre and this far inside the table.
PUSHER_START_CLEARANCE = 16.0
PUSHER_START_MARGIN = 8.0

#: Object names in state order; each contributes ``<name>.x, <name>.y`` to the state.
OBJECTS: tuple[str, ...] = (
    "block",
    *(f"{c}_block" for c in COLOURS),
    *(f"{c}_target" for c in COLOURS),
    "zone",
)
STATE_NAMES: tuple[str, ...] = tuple(
    f"{name}.{axis}" for name in ("pusher", *OBJECTS) for axis in ("x", "y")
)
ACTION_NAMES: tuple[str, ...] = ("vx", "vy")
CAMERA_KEYS: tuple[str, ...] = ("observation.images.top",)

TABLE_RGB = (222, 214, 196)
PUSHER_RGB = (25, 25, 25)
NEUTRAL_BLOCK_RGB = (110, 110, 110)
BLOCK_RGB = {"red": (200, 35, 35), "green": (35, 150, 50), "blue": (40, 70, 210)}
TARGET_RGB = {"red": (242, 140, 140), "green": (140, 210, 140), "blue": (140, 170, 242)}
ZONE_FILL_RGB = (236, 232, 222)
ZONE_RING_RGB = (90, 90, 90)

# Expert constants (table units): contact distance pusher-centre to block-centre along a face,
# the pre-push standoff, the orbit radius used to walk around a block without touching it.
_CONTACT = BLOCK_HALF + PUSHER_RADIUS
_STANDOFF = _CONTACT + 3.0
_ORBIT = 15.0
# Ordering: the first block is parked this far past the zone centre, away from the second.
_PARK_OFFSET = 7.0


@dataclass
class Layout:
    """An episode's initial scene: object centres by name (see ``OBJECTS``), block angles."""

    pusher: tuple[float, float]
    positions: dict[str, tuple[float, float]]
    angles: dict[str, float] = field(default_factory=dict)


def sample_layout(family: str, rng: np.random.Generator) -> Layout:
    """A random initial scene of ``family`` (see the module docstring for what each holds).

    ``which_target``: the neutral block near the centre, the red, green and blue targets in three
    of the four corner slots (shuffled). ``which_object`` / ``ordering``: the zone near the
    centre, the red, green and blue blocks in three of the four corner slots (shuffled).
    """
    check_family(family)
    corners = rng.permutation(len(CORNER_SLOTS))[: len(COLOURS)]
    jitter = rng.uniform(-CORNER_JITTER, CORNER_JITTER, size=(len(COLOURS), 2))
    centre = WORLD / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, size=2)
    angles_raw = rng.uniform(-math.pi / 4, math.pi / 4, size=len(COLOURS))
    corner_xy = [
        (CORNER_SLOTS[k][0] + dx, CORNER_SLOTS[k][1] + dy)
        for k, (dx, dy) in zip(corners, jitter, strict=True)
    ]
    if family == "which_target":
        positions = {"block": (float(centre[0]), float(centre[1]))}
        positions |= {f"{c}_target": xy for c, xy in zip(COLOURS, corner_xy, strict=True)}
        angles = {"block": float(angles_raw[0])}
    else:
        positions = {"zone": (float(centre[0]), float(centre[1]))}
        positions |= {f"{c}_block": xy for c, xy in zip(COLOURS, corner_xy, strict=True)}
        angles = {f"{c}_block": float(a) for c, a in zip(COLOURS, angles_raw, strict=True)}
    blocks = [np.array(xy) for name, xy in positions.items() if name.endswith("block")]
    low, high = PUSHER_START_MARGIN, WORLD - PUSHER_START_MARGIN
    for _ in range(1000):  # rejection sampling: a few draws (the free area is most of the table)
        pusher = rng.uniform(low, high, size=2)
        if all(np.linalg.norm(pusher - b) >= PUSHER_START_CLEARANCE for b in blocks):
            break
    else:
        raise RuntimeError("no free pusher start in 1000 draws: the layout constants overlap")
    return Layout((float(pusher[0]), float(pusher[1])), positions, angles)


def push_action(
    pusher: np.ndarray, obj: np.ndarray, goal: np.ndarray, max_speed: float = MAX_SPEED
) -> np.ndarray:
    """The scripted expert's velocity to push the block at ``obj`` towards ``goal``.

    Behind the block (on the line from the goal through the block, within a few units of it),
    it pushes along that line, slowing near the goal and steering sideways to stay on the line.
    Anywhere else it re-approaches: straight to a standoff point behind the block if it is
    already within 35 degrees of "behind", otherwise around the block on a circle of radius
    ``_ORBIT`` (so it does not knock it), stepping 60 degrees at a time towards behind. A push
    that drifts off the line therefore turns back into an approach by itself.
    """
    pusher, obj, goal = (np.asarray(a, dtype=float) for a in (pusher, obj, goal))
    to_goal = goal - obj
    dist = float(np.hypot(*to_goal))
    if dist < 0.5:
        return np.zeros(2, dtype=np.float32)
    u = to_goal / dist
    n = np.array([-u[1], u[0]])
    rel = pusher - obj
    behind, lateral = -float(rel @ u), float(rel @ n)
    if 0.0 < behind < _CONTACT + 4.5 and abs(lateral) < 3.5:
        speed = float(np.clip(4.0 * dist, 6.0, max_speed))
        velocity = u * speed - n * 3.0 * lateral
    else:
        theta = math.atan2(-lateral, behind)  # 0 = straight behind, +-pi = in front
        radius = float(np.hypot(*rel))
        if abs(theta) < math.radians(35):
            target = obj - u * _STANDOFF
        else:
            step = math.radians(60 if radius >= _ORBIT - 1.0 else 20)
            # Nearly in front (beyond 120 degrees), either way round will do, so always try
            # the same one first. Choosing by the sign of theta flips the direction right
            # where a cloned policy stands between block and goal; averaging the two ways
            # round, it pushes the block away from the goal.
            in_front = abs(theta) > math.radians(120)
            sides = [1.0, -1.0] if in_front else [1.0 if theta >= 0 else -1.0]
            target = None
            for side in sides:
                angle = theta - side * min(step, abs(theta))
                behind_dir = -u * math.cos(angle) - n * math.sin(angle)
                candidate = obj + _ORBIT * behind_dir
                if _on_table(candidate) or side == sides[-1]:
                    target = candidate
                    break
        target = np.clip(target, PUSHER_RADIUS + 0.5, WORLD - PUSHER_RADIUS - 0.5)
        offset = target - pusher
        gap = float(np.hypot(*offset))
        speed = min(max_speed, 10.0 * gap)
        velocity = offset / gap * speed if gap > 1e-9 else np.zeros(2)
    norm = float(np.hypot(*velocity))
    if norm > max_speed:
        velocity = velocity * (max_speed / norm)
    return velocity.astype(np.float32)


def _on_table(point: np.ndarray, margin: float = PUSHER_RADIUS + 1.0) -> bool:
    """Whether the pusher could stand at ``point`` (with ``margin`` from every wall)."""
    return bool(np.all(point >= margin) and np.all(point <= WORLD - margin))


class TabletopEnv(EpisodeEnv):
    """The language-conditioned tabletop (see the module docstring for world, state, success).

    Args:
        families: Families that ``reset(task=None)`` draws from (default: all of
            ``FAMILIES``). An explicit ``task`` may be of any family.
        paraphrase: ``reset(instruction=None)`` draws held-out paraphrases instead of the
            training templates.
        max_steps: Steps before an unsuccessful episode is truncated.
        image_size: Camera resolution in pixels (square); the table is always 96 units.
        supersample: Anti-aliasing factor of the rasterizer (1 = aliased, faster).

    ``reset(seed)`` is deterministic: the same seed (and task / instruction arguments) gives the
    same layout, images and, for the same actions, the same trajectory. The layout depends on
    the seed and the family only, not on the colours named, so one seed shows the same scene
    under every instruction of a family (what a language-matters test needs).
    """

    name = "tabletop"
    fps = FPS
    action_dim = len(ACTION_NAMES)
    state_dim = len(STATE_NAMES)
    action_names: tuple[str, ...] = ACTION_NAMES
    state_names: tuple[str, ...] = STATE_NAMES
    camera_keys: tuple[str, ...] = CAMERA_KEYS

    def __init__(
        self,
        families: Sequence[str] | None = None,
        paraphrase: bool = False,
        max_steps: int = MAX_STEPS,
        image_size: int = IMAGE_SIZE,
        supersample: int = 3,
    ) -> None:
        if isinstance(families, str):
            families = [families]
        self.families = tuple(check_family(f) for f in (FAMILIES if families is None else families))
        if not self.families:
            raise ValueError(f"families is empty: name at least one of {list(FAMILIES)}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
        self.paraphrase = bool(paraphrase)
        self.max_steps = int(max_steps)
        self.image_size = int(image_size)
        self.supersample = int(supersample)
        self.action_low = np.full(self.action_dim, -MAX_SPEED, dtype=np.float32)
        self.action_high = np.full(self.action_dim, MAX_SPEED, dtype=np.float32)
        self.image_shape = (self.image_size, self.image_size, 3)
        self._space: pymunk.Space | None = None
        self._pusher: pymunk.Body | None = None
        self._blocks: dict[str, pymunk.Body] = {}
        self._marks: dict[str, tuple[float, float]] = {}
        self._spec: TaskSpec | None = None
        self._instruction = ""
        self._steps = 0
        self._done = True
        self._first_in = False  # ordering: the first block has been in the zone (alone)
        self._order_broken = False  # ordering: the second block entered the zone first
        self._success = False

    # ---------------------------------------------------------------- episode
    def reset(
        self, seed: int, task: str | None = None, instruction: str | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode and return ``(obs, info)``.

        Args:
            seed: Non-negative integer; fixes the task (when ``task`` is None), the layout and
                the instruction (when ``instruction`` is None).
            task: A canonical task string (``instructions.TASKS``); None draws one from
                ``families``.
            instruction: The text the policy sees; None draws it from the task's templates
                (paraphrases when the env was built with ``paraphrase=True``). Pass ``""`` to
                blank it.

        Returns:
            ``obs = {"image": uint8 (H, W, 3), "state": float32 (18,)}`` and ``info`` with
            ``task``, ``instruction``, ``family``, ``success`` (False) and ``step`` (0).
        """
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        seed = int(seed)
        if task is None:
            rng = np.random.default_rng([seed, 0])
            family = self.families[int(rng.integers(len(self.families)))]
            specs = TASK_SPECS[family]
            spec = specs[int(rng.integers(len(specs)))]
        else:
            spec = parse_task(task)
        if instruction is None:
            instruction = instruction_for(
                spec.task, np.random.default_rng([seed, 2]), paraphrase=self.paraphrase
            )
        elif not isinstance(instruction, str):
            raise ValueError(f"instruction must be a str (or None), got {type(instruction)}")
        layout = sample_layout(
            spec.family, np.random.default_rng([seed, 1, FAMILIES.index(spec.family)])
        )
        self._build(layout)
        self._spec, self._instruction = spec, instruction
        self._steps, self._done, self._success = 0, False, False
        self._first_in = self._order_broken = False
        self._success = self._check_success()
        return self._obs(), self._info()

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply one 0.1 s control step; return ``(obs, reward, terminated, truncated, info)``.

        ``action`` is the pusher velocity ``(vx, vy)`` in table units per second, shape
        ``(action_dim,)``, clipped to ``[action_low, action_high]``. ``reward`` is 1.0 on the
        step that succeeds, else 0.0; ``terminated`` on success, ``truncated`` after
        ``max_steps`` steps without it.

        Raises:
            ValueError: the action's shape is not ``(2,)`` or it holds NaN / inf.
            RuntimeError: no episode is running (call ``reset`` first, or again after the end).
        """
        action = self.checked_action(action, "(vx, vy)")
        if self._done or self._space is None:
            raise RuntimeError("the episode is over or never started: call reset(seed) first")
        velocity = np.clip(action, self.action_low, self.action_high)
        dt = 1.0 / (FPS * SUBSTEPS)
        low, high = PUSHER_RADIUS, WORLD - PUSHER_RADIUS
        for _ in range(SUBSTEPS):
            here = np.array(self._pusher.position)
            there = np.clip(here + velocity * dt, low, high)  # the pusher stays on the table
            self._pusher.velocity = tuple((there - here) / dt)
            self._space.step(dt)
            self._keep_blocks_on_table()
        self._steps += 1
        self._success = self._check_success()
        terminated = self._success
        truncated = not terminated and self._steps >= self.max_steps
        self._done = terminated or truncated
        return self._obs(), float(terminated), terminated, truncated, self._info()

    def expert_action(self, task: str | None = None) -> np.ndarray:
        """The scripted expert's action (float32 ``(2,)``) from privileged state.

        ``task`` (default: the episode's own) lets the expert pursue another task of the same
        family in this scene, e.g. a language-blind baseline that picks a random colour.
        """
        if self._spec is None:
            raise RuntimeError("no episode: call reset(seed) first")
        spec = self._spec if task is None else parse_task(task)
        if spec.family != self._spec.family:
            raise ValueError(
                f"task {spec.task!r} is a {spec.family!r} task but this episode's scene is "
                f"{self._spec.family!r}: pass a task of that family"
            )
        pusher = np.array(self._pusher.position)
        obj, goal = self._expert_goal(spec)
        return push_action(pusher, obj, goal)

    # ---------------------------------------------------------------- properties
    @property
    def task(self) -> str:
        """The episode's canonical task string."""
        return self._require_spec().task

    @property
    def family(self) -> str:
        """The episode's task family."""
        return self._require_spec().family

    def state(self) -> np.ndarray:
        """The privileged state vector (float32, ``STATE_NAMES`` order; absent objects 0)."""
        self._require_spec()
        values = dict.fromkeys(OBJECTS, (0.0, 0.0))
        values |= self._marks
        values |= {name: tuple(body.position) for name, body in self._blocks.items()}
        pusher = tuple(self._pusher.position)
        flat = [*pusher, *(v for name in OBJECTS for v in values[name])]
        return np.asarray(flat, dtype=np.float32)

    def render(self) -> np.ndarray:
        """The top-down camera image, uint8 ``(image_size, image_size, 3)``."""
        self._require_spec()
        shapes: list[Disc | Square] = []
        if "zone" in self._marks:
            shapes.append(Disc(self._marks["zone"], ZONE_RADIUS, ZONE_FILL_RGB))
            shapes.append(Disc(self._marks["zone"], ZONE_RADIUS, ZONE_RING_RGB, width=1.5))
        for colour in COLOURS:
            if f"{colour}_target" in self._marks:
                shapes.append(
                    Disc(self._marks[f"{colour}_target"], TARGET_RADIUS, TARGET_RGB[colour])
                )
        for name, body in self._blocks.items():
            rgb = NEUTRAL_BLOCK_RGB if name == "block" else BLOCK_RGB[name.split("_")[0]]
            shapes.append(Square(tuple(body.position), BLOCK_HALF, float(body.angle), rgb))
        shapes.append(Disc(tuple(self._pusher.position), PUSHER_RADIUS, PUSHER_RGB))
        return rasterize(shapes, self.image_size, WORLD, TABLE_RGB, self.supersample)

    # ---------------------------------------------------------------- internals
    def _require_spec(self) -> TaskSpec:
        if self._spec is None:
            raise RuntimeError("no episode: call reset(seed) first")
        return self._spec

    def _build(self, layout: Layout) -> None:
        """A fresh pymunk space holding the layout (fresh each episode: determinism)."""
        space = pymunk.Space()
        space.gravity = (0.0, 0.0)
        space.damping = 0.0  # quasi-static: bodies keep no velocity between physics steps
        corners = [(0.0, 0.0), (WORLD, 0.0), (WORLD, WORLD), (0.0, WORLD)]
        for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
            wall = pymunk.Segment(space.static_body, a, b, 0.5)
            wall.friction = 0.5
            space.add(wall)
        self._blocks = {}
        self._marks = {}
        for name, xy in layout.positions.items():
            if name.endswith("block"):
                body = pymunk.Body(
                    1.0, pymunk.moment_for_box(1.0, (2 * BLOCK_HALF, 2 * BLOCK_HALF))
                )
                body.position = xy
                body.angle = layout.angles.get(name, 0.0)
                shape = pymunk.Poly.create_box(body, (2 * BLOCK_HALF, 2 * BLOCK_HALF))
                shape.friction, shape.elasticity = 0.5, 0.0
                space.add(body, shape)
                self._blocks[name] = body
            else:
                self._marks[name] = xy
        pusher = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        pusher.position = layout.pusher
        circle = pymunk.Circle(pusher, PUSHER_RADIUS)
        circle.friction, circle.elasticity = 0.5, 0.0
        space.add(pusher, circle)
        self._space, self._pusher = space, pusher

    def _keep_blocks_on_table(self) -> None:
        """Put back any block the (unstoppable, kinematic) pusher squeezed through a wall."""
        low, high = BLOCK_HALF, WORLD - BLOCK_HALF
        for body in self._blocks.values():
            x, y = body.position
            if not (low <= x <= high and low <= y <= high):
                body.position = (min(max(x, low), high), min(max(y, low), high))
                body.velocity = (0.0, 0.0)

    def _position(self, name: str) -> np.ndarray:
        if name in self._blocks:
            return np.array(self._blocks[name].position)
        return np.array(self._marks[name])

    def _distance(self, a: str, b: str) -> float:
        return float(np.hypot(*(self._position(a) - self._position(b))))

    def _check_success(self) -> bool:
        """The family's geometric success criterion (updates the ordering progress flag)."""
        spec = self._spec
        radius = SUCCESS_RADIUS[spec.family]
        if spec.family == "which_target":
            return self._distance("block", f"{spec.colours[0]}_target") <= radius
        if spec.family == "which_object":
            return self._distance(f"{spec.colours[0]}_block", "zone") <= radius
        first_in = self._distance(f"{spec.colours[0]}_block", "zone") <= radius
        second_in = self._distance(f"{spec.colours[1]}_block", "zone") <= radius
        if second_in and not self._first_in:
            self._order_broken = True  # the second block got there first: latched failure
        if first_in and not second_in:
            self._first_in = True
        return self._first_in and not self._order_broken and first_in and second_in

    def _expert_goal(self, spec: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
        """``(block centre, goal point)`` the expert pushes next, decided from the scene alone.

        Ordering: the first block is parked ``_PARK_OFFSET`` past the zone centre on the far
        side from the second block (so pushing the second one in later does not knock it out);
        once it lies inside the zone on that side, the second block is pushed to the centre.
        """
        if spec.family == "which_target":
            return self._position("block"), self._position(f"{spec.colours[0]}_target")
        zone = self._position("zone")
        first = self._position(f"{spec.colours[0]}_block")
        if spec.family == "which_object":
            return first, zone
        second = self._position(f"{spec.colours[1]}_block")
        towards = zone - second
        towards /= max(float(np.hypot(*towards)), 1e-9)
        park = zone + _PARK_OFFSET * towards
        parked = float(np.hypot(*(first - zone))) <= 9.5 and float((first - zone) @ towards) >= 3.5
        return (second, zone) if parked else (first, park)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"image": self.render(), "state": self.state()}

    def _info(self) -> dict[str, Any]:
        spec = self._require_spec()
        return {
            "task": spec.task,
            "instruction": self._instruction,
            "family": spec.family,
            "success": self._success,
            "step": self._steps,
        }
