"""Deterministic synthetic chest radiographs ("phantoms") drawn from a report's labels.

The embedded default data set pairs each real IU X-ray report with one of these images, so
the image carries the report's findings in a form a model can learn: nothing here is a real
radiograph. A phantom is a frontal (PA) view in radiograph polarity (air dark, bone and
fluid bright):

* anatomy: soft-tissue thorax, two lung fields (their union is the lung mask returned for
  segmentation), mediastinum, heart, spine, clavicles, ribs; size and position jitter per
  study;
* findings, one drawing per CheXpert observation: a wide heart (cardiothoracic ratio about
  0.6 instead of 0.45) for Cardiomegaly, a wide upper mediastinum for Enlarged
  Cardiomediastinum, fluid with a meniscus filling a costophrenic angle for Pleural
  Effusion, hazy blobs for Lung Opacity, dense lobar blobs with air bronchograms for
  Consolidation, patchy blobs for Pneumonia, a sharp round nodule for Lung Lesion, a
  perihilar "bat-wing" haze with septal lines for Edema, plate-like bands for Atelectasis, a
  dark lung-free apex with a pleural line for Pneumothorax, a lateral pleural band for
  Pleural Other, a broken rib with callus for Fracture and tubes, wires and a pacemaker for
  Support Devices.

Positive findings are drawn at full strength, uncertain ones (-1) at half strength, negative
and unmentioned ones not at all. The random generator is seeded from the study id, so the
same study always gives the same image on every machine.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
from scipy.ndimage import gaussian_filter

from .labeler import CHEXPERT_LABELS

#: Strength at which a label value is drawn (1 positive, -1 uncertain).
STRENGTH = {1: 1.0, -1: 0.5}


def study_seed(study_id: str, salt: str = "phantom") -> int:
    """A stable 63-bit seed from a study id (the same on every machine and Python run)."""
    digest = hashlib.sha256(f"{salt}:{study_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _Canvas:
    """Normalised coordinates (x right, y down, both in [0, 1]) over a square image."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x, self.y = np.meshgrid(coords, coords)
        self.img = np.zeros((size, size), dtype=np.float32)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = self.x - cx, self.y - cy
        u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
        return u * u + v * v <= 1.0

    def blob(self, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
        return np.exp(-0.5 * (((self.x - cx) / sx) ** 2 + ((self.y - cy) / sy) ** 2))

    def band(self, x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
        """Soft line segment from (x0, y0) to (x1, y1)."""
        px, py = self.x - x0, self.y - y0
        dx, dy = x1 - x0, y1 - y0
        t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        dist = np.hypot(px - t * dx, py - t * dy)
        return np.exp(-0.5 * (dist / width) ** 2)

    def j(self, scale: float) -> float:
        """A small random jitter in [-scale, scale]."""
        return float(self.rng.uniform(-scale, scale))


@functools.lru_cache(maxsize=8)
def _rib_template(size: int) -> np.ndarray:
    """Fourteen rib arcs ``(2 sides, 7 ribs, S, S)``; the same for every study of a size."""
    cv = _Canvas(size, np.random.default_rng(0))
    ribs = np.zeros((2, 7, size, size), dtype=np.float32)
    for side_i, side in enumerate((-1, 1)):
        for k in range(7):
            ry = 0.20 + 0.08 * k
            ribs[side_i, k] = cv.band(
                0.5 + side * 0.05, ry - 0.02, 0.5 + side * 0.36, ry + 0.05, 0.008
            )
    ribs.setflags(write=False)
    return ribs


@functools.lru_cache(maxsize=8)
def _clavicles_spine(size: int) -> np.ndarray:
    """Clavicles and the spine's column, the same for every study of a size."""
    cv = _Canvas(size, np.random.default_rng(0))
    out = np.zeros((size, size), dtype=np.float32)
    for side in (-1, 1):
        out += 0.18 * cv.band(0.5 + side * 0.05, 0.17, 0.5 + side * 0.30, 0.12, 0.012)
    out += 0.10 * (np.abs(cv.x - 0.5) < 0.03)
    out.setflags(write=False)
    return out


def _lungs(cv: _Canvas, geo: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Right (image left) and left lung masks: ellipses cut by a domed diaphragm."""
    masks = []
    for side in (-1, 1):
        cx = 0.5 + side * geo["lung_dx"]
        lung = cv.ellipse(cx, geo["lung_cy"], geo["lung_rx"], geo["lung_ry"])
        dome = geo["diaphragm"] - 0.06 * np.exp(-(((cv.x - cx) / 0.12) ** 2))
        dome = dome + (0.02 if side == 1 else 0.0)  # left hemidiaphragm sits lower
        masks.append(lung & (cv.y < dome))
    return masks[0], masks[1]


def render_phantom(
    labels: dict[str, int | None], study_id: str, size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the phantom of one study.

    Args:
        labels: CheXpert labels of the report (``label_report`` output: 1, 0, -1 or None).
        study_id: Seeds the anatomy jitter, noise and where findings go.
        size: Output side in pixels (the geometry is resolution-free).

    Returns:
        ``(image, lung_mask)``: float32 ``(size, size)`` in [0, 1] and uint8 ``(size, size)``
        (1 inside the lung fields).
    """
    unknown = set(labels) - set(CHEXPERT_LABELS)
    if unknown:
        raise KeyError(f"render_phantom: unknown label(s) {sorted(unknown)}; use CHEXPERT_LABELS.")
    if size < 16:
        raise ValueError(f"render_phantom size={size} must be >= 16 pixels.")
    rng = np.random.default_rng(study_seed(study_id))
    cv = _Canvas(size, rng)

    def strength(name: str) -> float:
        return STRENGTH.get(labels.get(name), 0.0)  # type: ignore[arg-type]

    geo = {
        "lung_dx": 0.19 + cv.j(0.015),
        "lung_cy": 0.47 + cv.j(0.02),
        "lung_rx": 0.15 + cv.j(0.01),
        "lung_ry": 0.33 + cv.j(0.015),
        "diaphragm": 0.80 + cv.j(0.02),
    }
    # Soft-tissue thorax.
    body = cv.ellipse(0.5, 0.55, 0.46 + cv.j(0.02), 0.50)
    cv.img[body] = 0.50
    right, left = _lungs(cv, geo)
    lung_mask = right | left
    cv.img[lung_mask] = 0.16
    # Lung markings: faint vessels fanning out of the hila.
    for side, mask in ((-1, right), (1, left)):
        hx, hy = 0.5 + side * 0.09, 0.50
        for _ in range(3):
            ang = rng.uniform(-2.4, -0.7)
            length = rng.uniform(0.10, 0.22)
            ex = hx + side * abs(np.cos(ang)) * length
            ey = hy + np.sin(ang) * length * rng.choice([-1, 1]) * 0.8
            cv.img += 0.05 * cv.band(hx, hy, ex, ey, 0.006) * mask
    # Ribs (a fixed template per size), one of them broken for Fracture; clavicles; spine.
    ribs = _rib_template(size)
    fracture = strength("Fracture")
    broken = (int(rng.integers(0, 2)), int(rng.integers(1, 6)))
    cv.img += 0.10 * ribs.sum(axis=(0, 1)) * body
    if fracture:
        side_i, k = broken
        side = (-1, 1)[side_i]
        ry = 0.20 + 0.08 * k
        gx = 0.5 + side * 0.25
        outer = np.abs(cv.x - 0.5) > abs(gx - 0.5)
        shifted = cv.band(gx, ry + 0.045, 0.5 + side * 0.36, ry + 0.09, 0.008)
        rib = ribs[side_i, k]
        cv.img += 0.10 * fracture * (shifted * outer - rib * outer) * body
        cv.img += 0.35 * fracture * cv.blob(gx, ry + 0.03, 0.02, 0.02)
    cv.img += _clavicles_spine(size) * np.where(body, 1.0, 0.0).astype(np.float32)
    # Mediastinum (wide for Enlarged Cardiomediastinum) and heart (wide for Cardiomegaly).
    med_half = 0.045 + 0.05 * strength("Enlarged Cardiomediastinum") + cv.j(0.005)
    mediastinum = (np.abs(cv.x - 0.5) < med_half) & (cv.y > 0.10) & (cv.y < 0.62) & body
    cv.img[mediastinum] = np.maximum(cv.img[mediastinum], 0.62)
    heart_rx = 0.125 + 0.075 * strength("Cardiomegaly") + cv.j(0.008)
    heart = cv.ellipse(0.53 + cv.j(0.01), 0.66, heart_rx, 0.13 + cv.j(0.008))
    cv.img[heart] = np.maximum(cv.img[heart], 0.70)

    def in_lung(mask: np.ndarray) -> tuple[float, float]:
        ys, xs = np.nonzero(mask)
        i = int(rng.integers(0, len(ys)))
        return (xs[i] + 0.5) / size, (ys[i] + 0.5) / size

    lungs_side = [right, left]
    # Parenchymal findings.
    s = strength("Lung Opacity")
    if s:
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = in_lung(lungs_side[int(rng.integers(0, 2))])
            cv.img += 0.30 * s * cv.blob(cx, cy, 0.07, 0.06) * lung_mask
    s = strength("Consolidation")
    if s:
        mask = lungs_side[int(rng.integers(0, 2))]
        cx, cy = in_lung(mask & (cv.y > 0.5))
        dense = np.clip(2.0 * cv.blob(cx, cy, 0.08, 0.07), 0, 1)
        bronchi = cv.band(cx - 0.05, cy - 0.04, cx + 0.04, cy + 0.05, 0.006)
        cv.img += 0.45 * s * (dense - 0.5 * bronchi * dense) * mask
    s = strength("Pneumonia")
    if s:
        mask = lungs_side[int(rng.integers(0, 2))]
        for _ in range(4):
            cx, cy = in_lung(mask)
            cv.img += 0.18 * s * cv.blob(cx, cy, 0.035, 0.035) * mask
    s = strength("Lung Lesion")
    if s:
        cx, cy = in_lung(lung_mask)
        nodule = cv.ellipse(cx, cy, 0.035, 0.035)
        cv.img += 0.40 * s * nodule
    s = strength("Edema")
    if s:
        for side in (-1, 1):
            cv.img += 0.28 * s * cv.blob(0.5 + side * 0.15, 0.52, 0.09, 0.12) * lung_mask
            for k in range(3):  # Kerley B lines at the lung bases
                yk = geo["diaphragm"] - 0.08 - 0.03 * k
                x_out = 0.5 + side * (geo["lung_dx"] + geo["lung_rx"] - 0.01)
                cv.img += 0.15 * s * cv.band(x_out, yk, x_out - side * 0.05, yk, 0.004) * lung_mask
    s = strength("Atelectasis")
    if s:
        mask = lungs_side[int(rng.integers(0, 2))]
        cx, cy = in_lung(mask & (cv.y > 0.55))
        cv.img += 0.40 * s * cv.band(cx - 0.08, cy - 0.01, cx + 0.08, cy + 0.01, 0.010) * mask
    # Pleural findings.
    s = strength("Pleural Effusion")
    if s:
        sides = [int(rng.integers(0, 2))] if rng.random() < 0.6 else [0, 1]
        for i in sides:
            side = (-1, 1)[i]
            lateral = np.abs(cv.x - (0.5 + side * geo["lung_dx"])) / geo["lung_rx"]
            level = geo["diaphragm"] - 0.16 * s + 0.10 * (1 - np.clip(lateral, 0, 1)) * 0.5
            fluid = lungs_side[i] & (cv.y > level - 0.06 * lateral)
            cv.img[fluid] = np.maximum(cv.img[fluid], 0.55 * s + 0.16 * (1 - s))
    s = strength("Pneumothorax")
    if s:
        i = int(rng.integers(0, 2))
        side = (-1, 1)[i]
        cx = 0.5 + side * (geo["lung_dx"] + 0.05)
        cap = lungs_side[i] & cv.ellipse(cx, geo["lung_cy"] - 0.18, 0.12, 0.20)
        cv.img[cap] = cv.img[cap] * (1 - 0.9 * s) + 0.03 * s
        edge = cap & ~cv.ellipse(cx, geo["lung_cy"] - 0.18, 0.105, 0.185)
        cv.img += 0.25 * s * edge
    s = strength("Pleural Other")
    if s:
        side = (-1, 1)[int(rng.integers(0, 2))]
        x_out = 0.5 + side * (geo["lung_dx"] + geo["lung_rx"] - 0.015)
        cv.img += 0.35 * s * cv.band(x_out, 0.25, x_out, 0.65, 0.012) * body
    # Support devices: a tube down the midline, a central line, a pacemaker with its lead.
    s = strength("Support Devices")
    if s:
        kinds = rng.permutation(3)[: int(rng.integers(1, 4))]
        for kind in kinds:
            if kind == 0:
                cv.img += 0.45 * s * cv.band(0.49, 0.0, 0.50, 0.42, 0.006)
            elif kind == 1:
                cv.img += 0.40 * s * cv.band(0.30, 0.14, 0.47, 0.35, 0.005)
            else:
                box = (np.abs(cv.x - 0.75) < 0.045) & (np.abs(cv.y - 0.16) < 0.03)
                cv.img += 0.6 * s * box
                cv.img += 0.35 * s * cv.band(0.73, 0.18, 0.56, 0.62, 0.005)
    # Acquisition: blur, exposure jitter and quantum noise.
    img = gaussian_filter(cv.img, sigma=0.4 * size / 64)
    # (its own generator, so a finding never changes the noise of an image)
    noise = np.random.default_rng(study_seed(study_id, "noise"))
    img = img * (1.0 + noise.uniform(-0.08, 0.08)) + noise.uniform(-0.04, 0.04)
    img = img + noise.normal(0.0, 0.02, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32), lung_mask.astype(np.uint8)
