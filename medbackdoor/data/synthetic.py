"""``synthetic``: the embedded default dataset, chest-radiograph-like images that need no download.

It is synthetic, made to let the whole pipeline (poisoning, training, metrics, Grad-CAM) run on a laptop in
minutes; numbers measured on it say nothing about real radiographs. What it takes from real data (derived by
``tools/derive_synthetic_assets.py`` from files shipped in the PyPI package ``torchxrayvision``):

* label vectors are drawn from the joint distribution of the 112,120 NIH label vectors, so prevalence and
  co-occurrence of the 14 findings (and the 54% "No Finding") follow the real release;
* images per patient follow the real distribution; each patient has a fixed anatomy, so patient-wise splits
  matter as they do on NIH;
* the lungs are shaped by the mean of 517 real lung masks; findings with radiologist boxes in NIH's
  ``BBox_List_2017`` (8 of the 14) are placed at a real box's position and scale.

Each finding is drawn as visible evidence with a random severity (graded difficulty): an enlarged heart
silhouette (Cardiomegaly), a basal opacity with a blunted costophrenic angle (Effusion), small round opacities
(Nodule) and a larger one (Mass), patchy haze (Infiltration), a dense lobar opacity (Consolidation, Pneumonia),
a plate-like band (Atelectasis), a lung edge pulled from the chest wall with no markings beyond it
(Pneumothorax), bilateral perihilar haze with septal lines (Edema), large dark lungs with flat diaphragms
(Emphysema), a reticular net at the bases (Fibrosis), a bright rim along the chest wall (Pleural_Thickening)
and a retrocardiac round density (Hernia). Images are rendered in normalised coordinates, so the same image can
be drawn at any resolution ≥ 32 px; generation is deterministic given ``seed``.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np
from PIL import Image

from medbackdoor.data.base import ChestXrayDataset, split_by_patient
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS

GENERATOR_VERSION = 1


@functools.lru_cache(maxsize=1)
def nih_stats() -> dict:
    """The derived NIH statistics shipped with the package (see ``tools/derive_synthetic_assets.py``)."""
    return json.loads(resources.files("medbackdoor.data").joinpath("assets/nih_stats.json").read_text())


@functools.lru_cache(maxsize=1)
def lung_template() -> np.ndarray:
    """Mean of 517 real binary lung masks, 64×64 float32 in [0, 1]."""
    with resources.files("medbackdoor.data").joinpath("assets/lung_template.png").open("rb") as f:
        return np.asarray(Image.open(f), np.float32) / 255.0


class SyntheticChestXray(ChestXrayDataset):
    """The embedded default dataset (see the module docstring).

    Args:
        root: unused (accepted so every dataset takes the same arguments).
        n_images: number of images in all splits together.
        seed: seeds labels, patients, splits and every image.
        source_size: side of the rendered source image in pixels (the model input is resized from it).
        val_fraction: share of images (whole patients) in the validation split.
        test_fraction: share of images (whole patients) in the test split.
        lesion_contrast: scales the visibility of every finding (lower is harder).
        limit: keep at most this many images per split.
    """

    name = "synthetic"
    label_names = LABELS

    @classmethod
    def example(cls, root) -> dict:
        """No files: a small generated set."""
        return {"n_images": 48, "source_size": 32}

    def __init__(self, root: str | None = None, n_images: int = 4000, seed: int = 0, source_size: int = 256,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, lesion_contrast: float = 1.0,
                 limit: int | None = None) -> None:
        if n_images < 3:
            raise UserError(f"synthetic n_images must be at least 3, got {n_images}")
        if source_size < 32:
            raise UserError(f"synthetic source_size must be at least 32 px, got {source_size}")
        self.seed, self.source_size, self.lesion_contrast = seed, source_size, lesion_contrast
        self.n_images = n_images
        rng = np.random.default_rng([seed, 1])
        labels = sample_labels(rng, n_images)
        patients = sample_patients(rng, n_images)
        splits = split_by_patient(patients, {"test": test_fraction, "val": val_fraction}, seed)
        self._image_seeds = rng.integers(0, 2**63, size=n_images)
        self._set_table([f"synthetic_{i:06d}" for i in range(n_images)], labels, patients, splits, limit, seed)
        self._rows = np.array([int(n.split("_")[1]) for n in self.names])
        self._patient_seeds = {p: int(p.split("_")[1]) for p in set(self.patients.tolist())}

    def read_source(self, index: int) -> np.ndarray:
        row = self._rows[index]
        anatomy = np.random.default_rng([self.seed, 2, self._patient_seeds[self.patients[index]]])
        image = np.random.default_rng(int(self._image_seeds[row]))
        return render(self.labels[index], anatomy, image, self.source_size, self.lesion_contrast)

    def source_fingerprint(self) -> dict:
        return {"dataset": self.name, "version": GENERATOR_VERSION, "seed": self.seed, "n": self.n_images,
                "source_size": self.source_size, "lesion_contrast": self.lesion_contrast}


def sample_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` label vectors from the empirical joint distribution of NIH label vectors."""
    combos = nih_stats()["combinations"]
    keys = np.array([[int(c) for c in key] for key, _ in combos], np.float32)
    counts = np.array([count for _, count in combos], np.float64)
    return keys[rng.choice(len(keys), size=n, p=counts / counts.sum())]


def sample_patients(rng: np.random.Generator, n: int) -> np.ndarray:
    """Patient ids with the real distribution of images per patient (the last patient is cut to fit)."""
    sizes, counts = np.array(nih_stats()["images_per_patient"], np.int64).T
    per_patient = rng.choice(sizes, size=n, p=counts / counts.sum())
    ids = np.repeat(np.arange(n), per_patient)[:n]
    return np.array([f"patient_{i:06d}" for i in ids])


# ----------------------------------------------------------------------------------------------------------
# Rendering. All geometry is in normalised coordinates (x to the image right, y down, both in [0, 1]).


class _Canvas:
    """Pixel-centre coordinate grids at one resolution and the drawing helpers that use them."""

    def __init__(self, size: int) -> None:
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.size, self.x, self.y = size, c[None, :], c[:, None]

    def ellipse(self, cx, cy, rx, ry, edge=0.01) -> np.ndarray:
        """A filled ellipse with a soft edge of about ``edge`` (normalised units)."""
        d = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2)
        return _sigmoid((1.0 - d) * min(rx, ry) / edge)

    def gauss(self, cx, cy, sx, sy) -> np.ndarray:
        return np.exp(-0.5 * (((self.x - cx) / sx) ** 2 + ((self.y - cy) / sy) ** 2))

    def segment(self, x0, y0, x1, y1, width) -> np.ndarray:
        """A soft line segment from (x0, y0) to (x1, y1)."""
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((self.x - x0) * dx + (self.y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        dist = np.hypot(self.x - (x0 + t * dx), self.y - (y0 + t * dy))
        return np.exp(-0.5 * (dist / width) ** 2)

    def smooth_noise(self, rng, cells: int) -> np.ndarray:
        """Smooth noise in [-1, 1]: a ``cells``×``cells`` random grid upsampled bicubically."""
        grid = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
        return np.asarray(Image.fromarray(grid, mode="F").resize((self.size, self.size), Image.BICUBIC))

    def warp(self, template: np.ndarray, cx, cy, sx, sy) -> np.ndarray:
        """Sample ``template`` (defined on [0, 1]²) scaled by (sx, sy) about (cx, cy), bilinearly."""
        u = ((self.x - cx) / sx + 0.5) * template.shape[1] - 0.5
        v = ((self.y - cy) / sy + 0.5) * template.shape[0] - 0.5
        return _bilinear(template, np.broadcast_to(u, (self.size, self.size)),
                         np.broadcast_to(v, (self.size, self.size)))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    h, w = img.shape
    pad = np.pad(img, 1)
    u, v = np.clip(u + 1, 0, w), np.clip(v + 1, 0, h)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    u1, v1 = np.minimum(u0 + 1, w + 1), np.minimum(v0 + 1, h + 1)
    fu, fv = u - u0, v - v0
    top = pad[v0, u0] * (1 - fu) + pad[v0, u1] * fu
    bottom = pad[v1, u0] * (1 - fu) + pad[v1, u1] * fu
    return (top * (1 - fv) + bottom * fv).astype(np.float32)


def _box(rng, label: str, default: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """A real radiologist box (cx, cy, w, h) for ``label`` where NIH has some, else ``default``, jittered."""
    boxes = nih_stats()["bboxes"].get(label)
    cx, cy, w, h = boxes[rng.integers(len(boxes))] if boxes else default
    return cx + rng.normal(0, 0.02), cy + rng.normal(0, 0.02), w, h


def render(labels: np.ndarray, anatomy: np.random.Generator, rng: np.random.Generator, size: int,
           contrast: float = 1.0) -> np.ndarray:
    """Draw one radiograph with the findings in ``labels`` as a ``size``×``size`` uint8 array.

    Args:
        labels: the 14-vector of findings to draw.
        anatomy: the patient's generator (lung shape, heart, ribs): the same for all images of a patient.
        rng: this image's generator (findings, exposure, noise).
        size: output side in pixels.
        contrast: scales the visibility of findings.
    """
    cv = _Canvas(size)
    on = {name: bool(v) for name, v in zip(LABELS, labels)}
    sev = {name: rng.uniform(0.25, 1.0) * contrast for name in LABELS}
    body = dict(cx=0.5 + anatomy.normal(0, 0.012), cy=0.47 + anatomy.normal(0, 0.015),
                sx=anatomy.uniform(0.86, 0.98), sy=anatomy.uniform(0.88, 1.0),
                heart=anatomy.uniform(0.14, 0.16), rib=anatomy.uniform(0.065, 0.08))
    if on["Emphysema"]:
        body["sy"] += 0.1 * sev["Emphysema"]
        body["sx"] += 0.04 * sev["Emphysema"]
    torso = cv.ellipse(0.5, 0.6, 0.47, 0.66, edge=0.03)
    img = 0.12 + 0.42 * torso + 0.12 * cv.ellipse(0.5, 0.02, 0.62, 0.16, edge=0.04)
    lungs = cv.warp(lung_template(), body["cx"], body["cy"], body["sx"], body["sy"])
    if on["Pneumothorax"]:
        lungs = _pneumothorax(cv, rng, img, lungs, sev["Pneumothorax"])
    markings = 0.5 + 0.5 * cv.smooth_noise(anatomy, 14)
    dark = 0.34 + (0.1 * sev["Emphysema"] if on["Emphysema"] else 0.0)
    img = img - dark * lungs + 0.05 * markings * lungs
    img += 0.07 * lungs * np.clip(np.cos(2 * np.pi * (cv.y + 0.9 * (cv.x - 0.5) ** 2) / body["rib"]), 0, 1) ** 3
    img += 0.06 * np.exp(-0.5 * ((cv.x - 0.5) / 0.03) ** 2) * torso
    for side in (-1, 1):
        img += 0.10 * cv.segment(0.5 + side * 0.06, 0.17, 0.5 + side * 0.3, 0.12, 0.012)
        img += 0.05 * cv.gauss(0.5 + side * 0.1, 0.45, 0.035, 0.05) * lungs
    heart_scale = 1.0 + (0.4 * sev["Cardiomegaly"] + 0.12 if on["Cardiomegaly"] else 0.0)
    heart = cv.ellipse(0.55, 0.65, body["heart"] * heart_scale, 0.13 * (1 + 0.35 * (heart_scale - 1)), 0.02)
    img += heart * (0.6 - img) * 0.8
    for name, draw in FINDINGS.items():
        if on[name]:
            img += draw(cv, rng, lungs, sev[name])
    img = np.clip(img, 0, 1) ** np.exp(rng.normal(0, 0.1))
    img = img * rng.uniform(0.92, 1.08) + rng.normal(0, 0.025) + rng.normal(0, 0.015, img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _side_mask(cv: _Canvas, side: int) -> np.ndarray:
    """1 on the image's left half (side -1) or right half (side 1), soft at the midline."""
    return _sigmoid(side * (cv.x - 0.5) / 0.01)


def _pneumothorax(cv, rng, img, lungs, s) -> np.ndarray:
    """Collapse one lung away from the lateral wall and apex; returns the new lung field."""
    side = rng.choice([-1, 1])
    cx, cy, _, _ = _box(rng, "Pneumothorax", (0.5 + side * 0.25, 0.3, 0.2, 0.3))
    side = -1 if cx < 0.5 else 1
    gap = 0.03 + 0.07 * s
    shrunk = cv.warp(lung_template(), 0.5 + side * gap * 0.5, 0.47 + gap * 0.6, 0.9 - gap, 0.95 - gap)
    region = _side_mask(cv, side)
    new = lungs * (1 - region) + shrunk * region
    edge = np.clip(new * (1 - new) * 4, 0, 1) * region * 0.5
    img -= 0.08 * s * np.clip(lungs - new, 0, 1)  # air beyond the edge, no markings
    img += 0.06 * s * edge
    return new


def _effusion(cv, rng, lungs, s):
    cx, _, _, _ = _box(rng, "Effusion", (0.3, 0.7, 0.2, 0.2))
    sides = [-1 if cx < 0.5 else 1] if rng.random() < 0.6 else [-1, 1]
    out = 0.0
    for side in sides:
        level = 0.74 - 0.1 * s - 0.05 * rng.random()
        meniscus = level - 0.08 * (np.abs(cv.x - 0.5) - 0.2)
        out = out + 0.32 * s * _sigmoid((cv.y - meniscus) / 0.02) * lungs * _side_mask(cv, side)
    return out


def _opacity(label, default, radius, amplitude, edge, count=(1, 1)):
    """A finding drawn as ``count`` round opacities near a real box of ``label``."""
    def draw(cv, rng, lungs, s):
        out = 0.0
        for _ in range(rng.integers(count[0], count[1] + 1)):
            cx, cy, w, h = _box(rng, label, default)
            r = rng.uniform(*radius)
            cx, cy = cx + rng.normal(0, w / 4), cy + rng.normal(0, h / 4)
            out = out + amplitude * s * cv.ellipse(cx, cy, r, r * rng.uniform(0.8, 1.2), edge)
        return out * np.clip(lungs * 1.5, 0, 1)
    return draw


def _infiltration(cv, rng, lungs, s):
    cx, cy, w, h = _box(rng, "Infiltration", (0.3, 0.5, 0.25, 0.3))
    out = 0.0
    for _ in range(rng.integers(3, 7)):
        out = out + cv.gauss(cx + rng.normal(0, w / 3), cy + rng.normal(0, h / 3), *rng.uniform(0.025, 0.05, 2))
    return 0.14 * s * np.clip(out, 0, 1) * lungs


def _lobar(label, amplitude):
    def draw(cv, rng, lungs, s):
        cx, cy, w, h = _box(rng, label, (0.3, 0.6, 0.2, 0.2))
        patch = cv.ellipse(cx, cy, max(w, 0.08) * 0.6, max(h, 0.08) * 0.6, edge=0.03)
        return amplitude * s * patch * lungs * (0.8 + 0.2 * cv.smooth_noise(rng, 10))
    return draw


def _atelectasis(cv, rng, lungs, s):
    cx, cy, w, h = _box(rng, "Atelectasis", (0.3, 0.65, 0.15, 0.1))
    tilt = rng.uniform(-0.06, 0.06)
    half = max(w, 0.1) * 0.6
    band = cv.segment(cx - half, cy - tilt, cx + half, cy + tilt, 0.012 + 0.008 * s)
    return 0.3 * s * band * lungs + 0.06 * s * cv.gauss(cx, cy + 0.04, 0.08, 0.05) * lungs


def _edema(cv, rng, lungs, s):
    haze = cv.gauss(0.38, 0.5, 0.09, 0.12) + cv.gauss(0.62, 0.5, 0.09, 0.12)
    lines = 0.0
    for side in (-1, 1):
        for k in range(4):
            y = 0.62 + 0.03 * k + rng.normal(0, 0.005)
            x = 0.5 + side * 0.36
            lines = lines + cv.segment(x - side * 0.05, y, x, y, 0.004)
    return (0.16 * s * np.clip(haze, 0, 1) + 0.12 * s * lines) * lungs


def _fibrosis(cv, rng, lungs, s):
    period = rng.uniform(0.025, 0.035)
    net = np.abs(np.sin(np.pi * (cv.x + 0.3 * cv.smooth_noise(rng, 6) * period) / period))
    net = np.maximum(net, np.abs(np.sin(np.pi * cv.y / period)).repeat(1, 1))
    zone = _sigmoid((cv.y - 0.5) / 0.05)
    return 0.1 * s * (net > 0.9) * zone * lungs


def _pleural(cv, rng, lungs, s):
    rim = np.clip(lungs * (1 - lungs) * 4, 0, 1) * _sigmoid((np.abs(cv.x - 0.5) - 0.2) / 0.02)
    apex = 1.0 - 0.6 * _sigmoid((cv.y - 0.5) / 0.05)
    return 0.22 * s * rim * apex


def _hernia(cv, rng, lungs, s):
    cx, cy = 0.5 + rng.normal(0, 0.02), 0.72 + rng.normal(0, 0.015)
    r = 0.05 + 0.03 * s
    return 0.15 * s * cv.ellipse(cx, cy, r, r * 0.8, 0.01) - 0.18 * s * cv.ellipse(cx, cy - r * 0.4, r * 0.7, r * 0.3)


FINDINGS = {
    "Atelectasis": _atelectasis,
    "Effusion": _effusion,
    "Infiltration": _infiltration,
    "Mass": _opacity("Mass", (0.3, 0.45, 0.15, 0.15), (0.04, 0.075), 0.26, 0.006),
    "Nodule": _opacity("Nodule", (0.3, 0.4, 0.05, 0.05), (0.012, 0.022), 0.3, 0.003, count=(1, 3)),
    "Pneumonia": _lobar("Pneumonia", 0.22),
    "Consolidation": _lobar("Consolidation", 0.3),
    "Edema": _edema,
    "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural,
    "Hernia": _hernia,
}
