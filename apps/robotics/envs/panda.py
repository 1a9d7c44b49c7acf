"""A 3-D task with a real arm: a pybullet Franka Panda pushes the named cube onto a target.

Why this task: it checks that what works on the 2-D tabletop carries over to a rendered 3-D
scene with an articulated arm, while staying cheap (pybullet ``DIRECT`` mode, the CPU tiny
renderer, no GPU or display) and solvable by a scripted expert (demonstrations cost nothing).
Three coloured cubes take three of four shuffled slots around one target, so the colour word
in the instruction is the only thing that says which cube to push (chance 1/3).

World and camera
    The Panda URDF of ``pybullet_data`` stands at the origin (fixed base) on a plain floor
    (``z = 0``); x points away from the robot, y to its left, metres throughout. The target (a
    flat disc of radius ``TARGET_RADIUS``, no collision) lies near ``(0.55, 0)``; the cubes
    (side ``2 * CUBE_HALF`` = 4 cm, 0.1 kg) start about 17 cm from it, on the diagonals.
    One fixed oblique camera in front of the table (``observation.images.top``) renders
    ``image_size`` (96) pixels square with ``ER_TINY_RENDERER`` (about 20 ms a frame).

Control
    ``FPS`` = 10 control steps per second, each ``SUBSTEPS`` = 24 physics steps of 1/240 s.
    The action is the end-effector displacement ``(dx, dy)`` in metres per step, clipped per
    axis to ``[-MAX_DELTA, MAX_DELTA]`` = ``[-0.03, 0.03]``. It moves a set-point (kept inside
    ``WORKSPACE`` and within ``MAX_REACH`` of the base, at the fixed pushing height
    ``EE_HEIGHT``, gripper pointing down, fingers closed);
    ``pybullet.calculateInverseKinematics`` turns the set-point into joint targets that
    position control tracks. The expert therefore plans in end-effector space and
    leaves the joints to the IK controller.

State (privileged, ``STATE_NAMES``, float32, metres)
    ``ee.x, ee.y, ee.z`` (the measured gripper point, between the fingertips: proprioception),
    then the centre of the ``red``, ``green`` and ``blue`` cube and of the ``target``, each as
    ``.x, .y``: 11 numbers.

Success (the episode terminates on success, reward 1.0 then, else 0.0)
    The named cube's centre within ``SUCCESS_RADIUS`` = 2.5 cm of the target centre (in the
    plane). ``max_steps`` (60, i.e. 6 s) steps without success truncate.

Expert
    ``expert_action()`` pushes the named cube along the line from the cube to the target,
    re-approaching from behind (around the cube, not through it) whenever the push drifts
    off the line, as the tabletop expert does. Measured: 50 / 50 seeds succeed (mean 23 steps)
    with ``python -c "from apps.robotics.envs.panda import expert_success_rate as f;
    print(f(range(50)))"`` (about 5 s without the camera on one core).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from apps.robotics.envs.base import EpisodeEnv
from apps.robotics.envs.instructions import COLOURS

CUBE_HALF = 0.02
TARGET_RADIUS = 0.035
SUCCESS_RADIUS = 0.025
#: Height (m) of the gripper point while pushing: fingertips about 1.5 cm above the floor.
EE_HEIGHT = 0.025
MAX_DELTA = 0.03
FPS = 10
SUBSTEPS = 24
MAX_STEPS = 60
IMAGE_SIZE = 96
#: The set-point's box in the plane: ``((x_low, x_high), (y_low, y_high))``, metres.
WORKSPACE: tuple[tuple[float, float], tuple[float, float]] = ((0.3, 0.75), (-0.3, 0.3))
#: ... and its largest distance from the robot base (the arm tracks well within 0.75 m).
MAX_REACH = 0.75

TARGET_CENTRE = (0.55, 0.0)
TARGET_JITTER = 0.02
#: Cube slots relative to the target: the four diagonals; three are shuffled among the colours.
SLOT_OFFSETS: tuple[tuple[float, float], ...] = (
    (0.12, 0.12),
    (0.12, -0.12),
    (-0.12, 0.12),
    (-0.12, -0.12),
)
SLOT_JITTER = 0.015
#: The gripper starts at least this far from every cube centre, inside ``START_BOX``.
START_CLEARANCE = 0.08
START_BOX: tuple[tuple[float, float], tuple[float, float]] = ((0.35, 0.7), (-0.25, 0.25))

PANDA_URDF = "franka_panda/panda.urdf"
#: Link index of ``panda_grasptarget`` (between the fingertips), the IK end effector.
EE_LINK = 11
ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
#: Null-space rest posture (elbow up, hand down) and the joint limits the IK respects.
REST_POSE = (0.0, 0.3, 0.0, -2.2, 0.0, 2.5, 0.785)
JOINT_LOW = (-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671)
JOINT_HIGH = (2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671)
ARM_FORCE = 87.0

OBJECTS: tuple[str, ...] = (*(f"{c}_cube" for c in COLOURS), "target")
STATE_NAMES: tuple[str, ...] = (
    "ee.x",
    "ee.y",
    "ee.z",
    *(f"{name}.{axis}" for name in OBJECTS for axis in ("x", "y")),
)
ACTION_NAMES: tuple[str, ...] = ("dx", "dy")
CAMERA_KEYS: tuple[str, ...] = ("observation.images.top",)

CUBE_RGBA = {
    "red": (0.8, 0.14, 0.14, 1.0),
    "green": (0.14, 0.6, 0.2, 1.0),
    "blue": (0.16, 0.27, 0.82, 1.0),
}
TARGET_RGBA = (0.95, 0.85, 0.2, 1.0)
FLOOR_RGBA = (0.87, 0.84, 0.77, 1.0)

FAMILY = "push_cube"
#: Training templates; the first, filled in, is the canonical task string.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "push the {c1} cube to the target",
    "slide the {c1} cube onto the target",
    "move the {c1} cube to the target",
    "put the {c1} cube on the target",
)
#: Held-out paraphrases: no content word shared with the training templates.
PARAPHRASE_TEMPLATES: tuple[str, ...] = (
    "shove the {c1} block over to the marker",
    "bring the {c1} box to the goal spot",
    "nudge the {c1} block until it sits on the disc",
)
#: Every canonical task string, in ``COLOURS`` order.
TASKS: tuple[str, ...] = tuple(TRAIN_TEMPLATES[0].format(c1=c) for c in COLOURS)

# Expert constants (metres): gripper-to-cube-centre distance when touching a face, the
# pre-push standoff, and the radius of the circle it walks around a cube on.
_CONTACT = CUBE_HALF + 0.012
_STANDOFF = _CONTACT + 0.015
_ORBIT = 0.075


def _pybullet() -> Any:
    """``pybullet`` (imported on first use: it prints a banner and is only needed here)."""
    try:
        import pybullet
    except ImportError as error:  # pragma: no cover - the robotics extra installs it
        raise ImportError(
            "the Panda env needs pybullet: pip install pybullet==3.2.7 "
            "(or pip install -e '.[robotics]')"
        ) from error
    return pybullet


def check_colour(colour: str) -> str:
    """``colour`` itself, or a ValueError listing the known colours."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}: choose one of {list(COLOURS)}")
    return colour


def task_for(colour: str) -> str:
    """The canonical task string that names ``colour`` (ValueError for an unknown colour)."""
    return TASKS[COLOURS.index(check_colour(colour))]


def parse_task(task: str) -> str:
    """The colour a canonical Panda task string names.

    Raises:
        ValueError: ``task`` is not one of :data:`TASKS` (the message lists them).
    """
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"unknown task {task!r}: the Panda env knows these tasks: {list(TASKS)}")
    return COLOURS[TASKS.index(task)]


def instruction_for(task: str, rng: np.random.Generator, paraphrase: bool = False) -> str:
    """An instruction for ``task`` drawn from the training templates (or the paraphrases)."""
    colour = parse_task(task)
    templates = PARAPHRASE_TEMPLATES if paraphrase else TRAIN_TEMPLATES
    return templates[int(rng.integers(len(templates)))].format(c1=colour)


def sample_layout(rng: np.random.Generator) -> dict[str, Any]:
    """A random scene: ``{"target": (x, y), "cubes": {colour: (x, y, yaw)}, "ee": (x, y)}``."""
    target = np.asarray(TARGET_CENTRE) + rng.uniform(-TARGET_JITTER, TARGET_JITTER, size=2)
    slots = rng.permutation(len(SLOT_OFFSETS))[: len(COLOURS)]
    jitter = rng.uniform(-SLOT_JITTER, SLOT_JITTER, size=(len(COLOURS), 2))
    yaws = rng.uniform(-math.pi / 4, math.pi / 4, size=len(COLOURS))
    cubes = {}
    for colour, slot, (dx, dy), yaw in zip(COLOURS, slots, jitter, yaws, strict=True):
        ox, oy = SLOT_OFFSETS[slot]
        cubes[colour] = (float(target[0] + ox + dx), float(target[1] + oy + dy), float(yaw))
    (x_low, x_high), (y_low, y_high) = START_BOX
    for _ in range(1000):  # rejection sampling: a few draws (the free area is most of the box)
        ee = rng.uniform((x_low, y_low), (x_high, y_high))
        if all(math.hypot(ee[0] - x, ee[1] - y) >= START_CLEARANCE for x, y, _ in cubes.values()):
            break
    else:
        raise RuntimeError("no free gripper start in 1000 draws: the layout constants overlap")
    return {
        "target": (float(target[0]), float(target[1])),
        "cubes": cubes,
        "ee": (float(ee[0]), float(ee[1])),
    }


def clip_to_workspace(point: np.ndarray) -> np.ndarray:
    """``point`` (x, y) moved into ``WORKSPACE`` and within ``MAX_REACH`` of the base."""
    (x_low, x_high), (y_low, y_high) = WORKSPACE
    point = np.clip(np.asarray(point, dtype=float), (x_low, y_low), (x_high, y_high))
    radius = float(np.hypot(*point))
    return point * (MAX_REACH / radius) if radius > MAX_REACH else point


def push_delta(ee: np.ndarray, cube: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The expert's end-effector displacement (float32 ``(2,)``) to push ``cube`` to ``goal``.

    Behind the cube (on the line from the goal through the cube, within a few centimetres of
    it) it pushes along that line, slowing near the goal and steering sideways to stay on it.
    Anywhere else it re-approaches: straight to a standoff point behind the cube when already
    within 35 degrees of "behind", otherwise around the cube on a circle of radius ``_ORBIT``,
    60 degrees at a time, so it does not knock the cube on the way.
    """
    ee, cube, goal = (np.asarray(a, dtype=float)[:2] for a in (ee, cube, goal))
    to_goal = goal - cube
    dist = float(np.hypot(*to_goal))
    if dist < 0.004:
        return np.zeros(2, dtype=np.float32)
    u = to_goal / dist
    n = np.array([-u[1], u[0]])
    rel = ee - cube
    behind, lateral = -float(rel @ u), float(rel @ n)
    if 0.0 < behind < _CONTACT + 0.025 and abs(lateral) < 0.01:
        speed = float(np.clip(0.6 * dist, 0.006, 0.8 * MAX_DELTA))
        delta = u * speed - n * 0.6 * lateral
    else:
        theta = math.atan2(-lateral, behind)  # 0 = straight behind, +-pi = in front
        radius = float(np.hypot(*rel))
        if abs(theta) < math.radians(35):
            waypoint = cube - u * _STANDOFF
        else:
            step = math.radians(60 if radius >= _ORBIT - 0.01 else 20)
            angle = theta - math.copysign(min(step, abs(theta)), theta)
            waypoint = cube + _ORBIT * (-u * math.cos(angle) - n * math.sin(angle))
        waypoint = clip_to_workspace(waypoint)
        offset = waypoint - ee
        gap = float(np.hypot(*offset))
        delta = offset * min(1.0, MAX_DELTA / gap) if gap > 1e-9 else np.zeros(2)
    return np.clip(delta, -MAX_DELTA, MAX_DELTA).astype(np.float32)


class PandaPushEnv(EpisodeEnv):
    """Push the named cube onto the target with a pybullet Panda (see the module docstring).

    Args:
        colours: Colours that ``reset(task=None)`` draws the named cube from (default: all of
            ``COLOURS``). An explicit ``task`` may name any colour.
        paraphrase: ``reset(instruction=None)`` draws held-out paraphrases instead of the
            training templates.
        max_steps: Steps before an unsuccessful episode is truncated.
        image_size: Camera resolution in pixels (square).
        camera: Render the camera (``obs["image"]``). ``False`` leaves the image out of the
            observation (and ``camera_keys`` empty): about 20x faster, for expert rollouts.

    ``reset(seed)`` is deterministic: each episode rebuilds the simulation from scratch, so the
    same seed (and task / instruction) gives the same scene, images and, for the same actions,
    the same trajectory. The scene depends on the seed only, not on the colour named.
    Call ``close()`` (or use the env as a context manager) to free the pybullet client early.
    """

    name = "panda"
    fps = FPS
    action_dim = len(ACTION_NAMES)
    state_dim = len(STATE_NAMES)
    action_names: tuple[str, ...] = ACTION_NAMES
    state_names: tuple[str, ...] = STATE_NAMES

    def __init__(
        self,
        colours: Sequence[str] | None = None,
        paraphrase: bool = False,
        max_steps: int = MAX_STEPS,
        image_size: int = IMAGE_SIZE,
        camera: bool = True,
    ) -> None:
        if isinstance(colours, str):
            colours = [colours]
        self.colours = tuple(check_colour(c) for c in (COLOURS if colours is None else colours))
        if not self.colours:
            raise ValueError(f"colours is empty: name at least one of {list(COLOURS)}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
        self.paraphrase = bool(paraphrase)
        self.max_steps = int(max_steps)
        self.image_size = int(image_size)
        self.camera = bool(camera)
        self.camera_keys: tuple[str, ...] = CAMERA_KEYS if self.camera else ()
        self.action_low = np.full(self.action_dim, -MAX_DELTA, dtype=np.float32)
        self.action_high = np.full(self.action_dim, MAX_DELTA, dtype=np.float32)
        self.image_shape = (self.image_size, self.image_size, 3)
        self._p = _pybullet()
        self._client: int | None = None
        self._robot = -1
        self._cubes: dict[str, int] = {}
        self._target = (0.0, 0.0)
        self._setpoint = np.zeros(2)
        self._colour: str | None = None
        self._instruction = ""
        self._steps = 0
        self._done = True
        self._success = False
        self._view: Any = None
        self._projection: Any = None

    # ---------------------------------------------------------------- episode
    def reset(
        self, seed: int, task: str | None = None, instruction: str | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode and return ``(obs, info)``.

        Args:
            seed: Non-negative integer; fixes the task (when ``task`` is None), the scene and
                the instruction (when ``instruction`` is None).
            task: A canonical task string (:data:`TASKS`, see :func:`task_for`); None draws
                one from ``colours``.
            instruction: The text the policy sees; None draws it from the templates. Pass
                ``""`` to blank it.

        Returns:
            ``obs = {"image": uint8 (H, W, 3), "state": float32 (11,)}`` (no ``image`` when
            built with ``camera=False``) and ``info`` with ``task``, ``instruction``,
            ``family``, ``success`` (False) and ``step`` (0).
        """
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        seed = int(seed)
        if task is None:
            rng = np.random.default_rng([seed, 0])
            colour = self.colours[int(rng.integers(len(self.colours)))]
        else:
            colour = parse_task(task)
        if instruction is None:
            instruction = instruction_for(
                task_for(colour), np.random.default_rng([seed, 2]), paraphrase=self.paraphrase
            )
        elif not isinstance(instruction, str):
            raise ValueError(f"instruction must be a str (or None), got {type(instruction)}")
        self._build(sample_layout(np.random.default_rng([seed, 1])))
        self._colour, self._instruction = colour, instruction
        self._steps, self._done = 0, False
        self._success = self._check_success()
        return self._obs(), self._info()

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply one 0.1 s control step; return ``(obs, reward, terminated, truncated, info)``.

        ``action`` is the end-effector displacement ``(dx, dy)`` in metres, shape ``(2,)``,
        clipped to ``[action_low, action_high]``; the set-point stays inside the workspace.
        ``reward`` is 1.0 on the step that succeeds, else 0.0; ``terminated`` on success,
        ``truncated`` after ``max_steps`` steps without it.

        Raises:
            ValueError: the action's shape is not ``(2,)`` or it holds NaN / inf.
            RuntimeError: no episode is running (call ``reset`` first, or again after the end).
        """
        action = self.checked_action(action, "(dx, dy) in metres")
        if self._done or self._client is None:
            raise RuntimeError("the episode is over or never started: call reset(seed) first")
        delta = np.clip(action, self.action_low, self.action_high)
        self._setpoint = clip_to_workspace(self._setpoint + delta)
        joints = self.inverse_kinematics((*self._setpoint, EE_HEIGHT))
        p, client = self._p, self._client
        p.setJointMotorControlArray(
            self._robot,
            ARM_JOINTS,
            p.POSITION_CONTROL,
            targetPositions=joints,
            forces=[ARM_FORCE] * len(ARM_JOINTS),
            physicsClientId=client,
        )
        for _ in range(SUBSTEPS):
            p.stepSimulation(physicsClientId=client)
        self._steps += 1
        self._success = self._check_success()
        terminated = self._success
        truncated = not terminated and self._steps >= self.max_steps
        self._done = terminated or truncated
        return self._obs(), float(terminated), terminated, truncated, self._info()

    def expert_action(self, task: str | None = None) -> np.ndarray:
        """The scripted expert's displacement (float32 ``(2,)``) from privileged state.

        ``task`` (default: the episode's own) lets the expert push another colour's cube in
        this scene, e.g. a language-blind baseline that picks a random colour.
        """
        colour = self._require_colour() if task is None else parse_task(task)
        return push_delta(self.ee_position(), self.cube_position(colour), np.array(self._target))

    def inverse_kinematics(self, position: Sequence[float]) -> list[float]:
        """The 7 arm joint angles that put the gripper point at ``position`` (x, y, z), pointing
        down, from ``pybullet.calculateInverseKinematics`` with the rest-pose null space."""
        p = self._p
        solution = p.calculateInverseKinematics(
            self._robot,
            EE_LINK,
            [float(v) for v in position],
            p.getQuaternionFromEuler((math.pi, 0.0, 0.0)),
            lowerLimits=list(JOINT_LOW),
            upperLimits=list(JOINT_HIGH),
            jointRanges=[h - lo for lo, h in zip(JOINT_LOW, JOINT_HIGH, strict=True)],
            restPoses=list(REST_POSE),
            maxNumIterations=50,
            physicsClientId=self._require_client(),
        )
        return list(solution[: len(ARM_JOINTS)])

    def close(self) -> None:
        """Disconnect the pybullet client (a later ``reset`` opens a new one)."""
        if self._client is not None:
            self._p.disconnect(physicsClientId=self._client)
            self._client = None
            self._done = True

    def __enter__(self) -> PandaPushEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: pybullet may be gone
            self.close()

    # ---------------------------------------------------------------- properties
    @property
    def task(self) -> str:
        """The episode's canonical task string."""
        return task_for(self._require_colour())

    @property
    def colour(self) -> str:
        """The colour of the cube to push this episode."""
        return self._require_colour()

    @property
    def family(self) -> str:
        """The task family (always ``"push_cube"``)."""
        return FAMILY

    def ee_position(self) -> np.ndarray:
        """The measured gripper point ``(x, y, z)`` in metres."""
        state = self._p.getLinkState(self._robot, EE_LINK, physicsClientId=self._require_client())
        return np.asarray(state[4], dtype=float)

    def cube_position(self, colour: str) -> np.ndarray:
        """The centre ``(x, y, z)`` of the ``colour`` cube in metres."""
        body = self._cubes[check_colour(colour)]
        position, _ = self._p.getBasePositionAndOrientation(
            body, physicsClientId=self._require_client()
        )
        return np.asarray(position, dtype=float)

    def state(self) -> np.ndarray:
        """The privileged state vector (float32, ``STATE_NAMES`` order)."""
        cubes = [self.cube_position(c)[:2] for c in COLOURS]
        flat = [*self.ee_position(), *np.concatenate(cubes), *self._target]
        return np.asarray(flat, dtype=np.float32)

    def render(self) -> np.ndarray:
        """The camera image, uint8 ``(image_size, image_size, 3)`` (ER_TINY_RENDERER)."""
        p, size = self._p, self.image_size
        _, _, rgba, _, _ = p.getCameraImage(
            size,
            size,
            self._view,
            self._projection,
            shadow=0,
            renderer=p.ER_TINY_RENDERER,
            physicsClientId=self._require_client(),
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[..., :3].copy()

    # ---------------------------------------------------------------- internals
    def _require_client(self) -> int:
        if self._client is None:
            raise RuntimeError("no episode: call reset(seed) first")
        return self._client

    def _require_colour(self) -> str:
        if self._colour is None:
            raise RuntimeError("no episode: call reset(seed) first")
        return self._colour

    def _build(self, layout: dict[str, Any]) -> None:
        """A freshly reset simulation holding ``layout`` (rebuilt each episode: determinism)."""
        import pybullet_data

        p = self._p
        if self._client is None:
            self._client = p.connect(p.DIRECT)
        client = self._client
        p.resetSimulation(physicsClientId=client)
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=client)
        p.setGravity(0.0, 0.0, -9.81, physicsClientId=client)
        floor = p.loadURDF("plane.urdf", physicsClientId=client)
        p.changeVisualShape(
            floor, -1, textureUniqueId=-1, rgbaColor=FLOOR_RGBA, physicsClientId=client
        )
        self._robot = p.loadURDF(
            PANDA_URDF, (0.0, 0.0, 0.0), useFixedBase=True, physicsClientId=client
        )
        disc = p.createVisualShape(
            p.GEOM_CYLINDER,
            radius=TARGET_RADIUS,
            length=0.001,
            rgbaColor=TARGET_RGBA,
            physicsClientId=client,
        )
        self._target = layout["target"]
        p.createMultiBody(
            baseMass=0.0,
            baseVisualShapeIndex=disc,
            basePosition=(*self._target, 0.0006),
            physicsClientId=client,
        )
        half = (CUBE_HALF,) * 3
        box = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=client)
        self._cubes = {}
        for colour, (x, y, yaw) in layout["cubes"].items():
            look = p.createVisualShape(
                p.GEOM_BOX, halfExtents=half, rgbaColor=CUBE_RGBA[colour], physicsClientId=client
            )
            body = p.createMultiBody(
                baseMass=0.1,
                baseCollisionShapeIndex=box,
                baseVisualShapeIndex=look,
                basePosition=(x, y, CUBE_HALF),
                baseOrientation=p.getQuaternionFromEuler((0.0, 0.0, yaw)),
                physicsClientId=client,
            )
            p.changeDynamics(body, -1, lateralFriction=0.5, physicsClientId=client)
            self._cubes[colour] = body
        # Start posture: the IK solution for the start set-point, set exactly (refined a few
        # times, since the IK starts from the current joints), fingers closed and held.
        self._setpoint = np.asarray(layout["ee"], dtype=float)
        for joint, angle in zip(ARM_JOINTS, REST_POSE, strict=True):
            p.resetJointState(self._robot, joint, angle, physicsClientId=client)
        for _ in range(5):
            for joint, angle in zip(
                ARM_JOINTS, self.inverse_kinematics((*self._setpoint, EE_HEIGHT)), strict=True
            ):
                p.resetJointState(self._robot, joint, angle, physicsClientId=client)
        for joint in FINGER_JOINTS:
            p.resetJointState(self._robot, joint, 0.0, physicsClientId=client)
        p.setJointMotorControlArray(
            self._robot,
            FINGER_JOINTS,
            p.POSITION_CONTROL,
            targetPositions=[0.0, 0.0],
            forces=[40.0, 40.0],
            physicsClientId=client,
        )
        p.setJointMotorControlArray(
            self._robot,
            ARM_JOINTS,
            p.POSITION_CONTROL,
            targetPositions=[
                p.getJointState(self._robot, j, physicsClientId=client)[0] for j in ARM_JOINTS
            ],
            forces=[ARM_FORCE] * len(ARM_JOINTS),
            physicsClientId=client,
        )
        if self.camera and self._view is None:
            self._view = p.computeViewMatrix(
                cameraEyePosition=(0.92, 0.0, 0.42),
                cameraTargetPosition=(0.52, 0.0, 0.0),
                cameraUpVector=(0.0, 0.0, 1.0),
                physicsClientId=client,
            )
            self._projection = p.computeProjectionMatrixFOV(
                fov=48.0, aspect=1.0, nearVal=0.05, farVal=3.0, physicsClientId=client
            )

    def _check_success(self) -> bool:
        """The named cube's centre within ``SUCCESS_RADIUS`` of the target centre (in x, y)."""
        cube = self.cube_position(self._require_colour())[:2]
        return float(np.hypot(*(cube - np.asarray(self._target)))) <= SUCCESS_RADIUS

    def _obs(self) -> dict[str, np.ndarray]:
        if self.camera:
            return {"image": self.render(), "state": self.state()}
        return {"state": self.state()}

    def _info(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "instruction": self._instruction,
            "family": FAMILY,
            "success": self._success,
            "step": self._steps,
        }


def expert_success_rate(seeds: Iterable[int], camera: bool = False) -> dict[str, float]:
    """Run the scripted expert on ``seeds``; return ``{"success_rate", "mean_steps", "episodes"}``
    (the measurement quoted in the module docstring)."""
    env = PandaPushEnv(camera=camera)
    wins, steps, episodes = 0, 0, 0
    try:
        for seed in seeds:
            info = env.expert_episode(seed)
            wins += int(info["success"])
            steps += info["step"]
            episodes += 1
    finally:
        env.close()
    return {
        "success_rate": wins / max(episodes, 1),
        "mean_steps": steps / max(episodes, 1),
        "episodes": float(episodes),
    }
