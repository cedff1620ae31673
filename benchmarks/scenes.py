"""Synthetic street scenes with pixel labels: data with ground truth and no download.

Why: the demo model, the calibration accuracy checks and the benchmarks need images whose
correct segmentation is known, on machines that cannot download Cityscapes or VOC. Each
scene is a one-point-perspective street: sky, road with lane markings, sidewalks, building
facades with windows (or a park side with trees), parked and moving vehicles, walking
people. Image and labels are painted by the *same* polygons in z-order (far to near), so
occlusions are exact.

The classes are not separable by colour: roads, sidewalks, buildings, cars and clothes all
draw from overlapping greys and tints, and a global lighting gain / colour cast / gradient /
cast shadows change every scene. What tells them apart is shape (boxes with wheels, upright
figures with heads), texture (fine asphalt grain, leafy blobs, window grids, smooth sky)
and context (cars on the road, people on sidewalks, sky above the horizon).

Determinism: ``SceneGenerator(h, w, seed).scene(i)`` depends only on (h, w, seed, i), not on
call order (each scene draws from ``numpy.random.default_rng([seed, i])``). Texture noise is
precomputed per generator from ``seed`` and sampled at random offsets, which keeps a
256×512 scene at a few milliseconds.

Video: :meth:`SceneGenerator.video_frames` keeps one layout and moves the vehicles (along
the road, in depth, or across it) and the people (walking, legs swinging) from frame to
frame; the static layer is painted once.

Convention used by the demo model: training scenes come from seeds below
:data:`TRAIN_SEED_LIMIT`, held-out evaluation scenes from seeds at or above
:data:`HELDOUT_SEED_BASE`; the two ranges never meet.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

#: Class names, index = label value.
CLASSES = ("sky", "road", "building", "vehicle", "person", "vegetation", "sidewalk")
#: RGB display colour per class (Cityscapes-like).
PALETTE = (
    (70, 130, 180),  # sky
    (128, 64, 128),  # road
    (70, 70, 70),  # building
    (0, 0, 142),  # vehicle
    (220, 20, 60),  # person
    (107, 142, 35),  # vegetation
    (244, 35, 232),  # sidewalk
)
SKY, ROAD, BUILDING, VEHICLE, PERSON, VEGETATION, SIDEWALK = range(len(CLASSES))

TRAIN_SEED_LIMIT = 1_000_000
HELDOUT_SEED_BASE = 10_000_000

_SHIFT = 4  # cv2 fixed-point bits: sub-pixel geometry, so motion between frames is smooth
_ONE = 1 << _SHIFT

# texture amplitudes (grey levels) per surface: (fine grain, mid-scale blobs)
_TEX = {
    SKY: (0.8, 2.0),
    ROAD: (9.0, 5.0),
    SIDEWALK: (5.0, 3.0),
    BUILDING: (3.5, 7.0),
    VEGETATION: (16.0, 30.0),
    VEHICLE: (1.5, 1.5),
    PERSON: (4.0, 5.0),
}


class _Canvas:
    """Image (float BGR), labels and texture amplitudes, painted together by each primitive."""

    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.img = np.zeros((height, width, 3), np.float32)
        self.lab = np.zeros((height, width), np.uint8)
        self.tex = np.zeros((height, width, 2), np.float32)

    def copy(self) -> _Canvas:
        c = _Canvas.__new__(_Canvas)
        c.h, c.w = self.h, self.w
        c.img, c.lab, c.tex = self.img.copy(), self.lab.copy(), self.tex.copy()
        return c

    @staticmethod
    def _fix(pts) -> np.ndarray:
        return np.round(np.asarray(pts, np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)

    def poly(self, pts, colour, cls: int | None, tex=None) -> None:
        """Fill a polygon; ``cls=None`` paints a detail (window, marking) that keeps the label."""
        p = [self._fix(pts)]
        cv2.fillPoly(self.img, p, tuple(float(c) for c in colour), cv2.LINE_8, _SHIFT)
        if cls is not None:
            cv2.fillPoly(self.lab, p, int(cls), cv2.LINE_8, _SHIFT)
            t = _TEX[cls] if tex is None else tex
            cv2.fillPoly(self.tex, p, (float(t[0]), float(t[1])), cv2.LINE_8, _SHIFT)
        elif tex is not None:
            cv2.fillPoly(self.tex, p, (float(tex[0]), float(tex[1])), cv2.LINE_8, _SHIFT)

    def polys(self, pts: np.ndarray, colour, tex=None) -> None:
        """Many same-colour detail quads (N×4×2) in one call; labels unchanged."""
        p = list(np.round(pts * _ONE).astype(np.int32).reshape(len(pts), -1, 1, 2))
        cv2.fillPoly(self.img, p, tuple(float(c) for c in colour), cv2.LINE_8, _SHIFT)
        if tex is not None:
            cv2.fillPoly(self.tex, p, (float(tex[0]), float(tex[1])), cv2.LINE_8, _SHIFT)

    def ellipse(self, centre, axes, colour, cls: int | None, angle: float = 0.0, tex=None) -> None:
        c = (int(round(centre[0] * _ONE)), int(round(centre[1] * _ONE)))
        a = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
        cv2.ellipse(self.img, c, a, angle, 0, 360, tuple(float(v) for v in colour), -1, cv2.LINE_8, _SHIFT)
        if cls is not None:
            cv2.ellipse(self.lab, c, a, angle, 0, 360, int(cls), -1, cv2.LINE_8, _SHIFT)
            t = _TEX[cls] if tex is None else tex
            cv2.ellipse(self.tex, c, a, angle, 0, 360, (float(t[0]), float(t[1])), -1, cv2.LINE_8, _SHIFT)

    def line(self, p0, p1, thickness: float, colour, cls: int | None) -> None:
        """A thick segment (limb, pole) as a quad, so it shares the sub-pixel fill rule."""
        (x0, y0), (x1, y1) = p0, p1
        dx, dy = x1 - x0, y1 - y0
        n = math.hypot(dx, dy) or 1.0
        ox, oy = -dy / n * thickness / 2, dx / n * thickness / 2
        self.poly([(x0 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1 - ox, y1 - oy), (x0 - ox, y0 - oy)], colour, cls)


def _jitter(rng: np.random.Generator, colour, amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _grey(rng: np.random.Generator, lo: float, hi: float, tint: float = 12.0) -> np.ndarray:
    g = rng.uniform(lo, hi)
    return _jitter(rng, (g, g, g), tint)


def _quad_point(quad, u: float, v: float):
    """Bilinear point in a quad given as (top-left, top-right, bottom-right, bottom-left)."""
    (ax, ay), (bx, by), (cx, cy), (dx, dy) = quad
    tx, ty = ax + (bx - ax) * u, ay + (by - ay) * u
    bx2, by2 = dx + (cx - dx) * u, dy + (cy - dy) * u
    return tx + (bx2 - tx) * v, ty + (by2 - ty) * v


# ------------------------------------------------------------------------------------------
# Layout: a street in one-point perspective
# ------------------------------------------------------------------------------------------
@dataclass
class _Street:
    """Ground geometry. Depth ``d`` runs from 0 (vanishing point) to 1 (image bottom)."""

    h: int
    w: int
    horizon: float
    vx: float
    road_half: float  # road half-width at d = 1 (pixels)
    walk_factor: float  # sidewalk outer edge / road edge
    apex: float = 2.0  # half-width at the vanishing point

    def y(self, d: float) -> float:
        return self.horizon + d * (self.h - self.horizon)

    def road_x(self, d: float, u: float) -> float:
        """x at depth ``d`` and lateral position ``u`` (-1 left road edge, +1 right road edge)."""
        return self.vx + u * (self.apex + d * (self.road_half - self.apex))

    def ppm(self, d: float) -> float:
        """Pixels per metre at depth ``d`` (road 7 m wide)."""
        return max(1e-3, d * 2 * self.road_half / 7.0)


@dataclass
class _Vehicle:
    d: float  # depth of the bottom edge
    u: float  # lateral position on the road (-1..1) or, for crossing, x fraction
    vd: float  # depth speed per frame (rear view) or x speed in metres per frame (side view)
    view: str  # "rear" | "side"
    kind: str  # "car" | "van" | "bus"
    colour: np.ndarray
    window: np.ndarray
    facing: int = 1

    def at(self, t: float) -> _Vehicle:
        v = _Vehicle(**{**self.__dict__})
        if self.view == "rear":
            span = 1.25 - 0.12
            v.d = 0.12 + (self.d - 0.12 + self.vd * t) % span
        else:
            v.u = self.u + self.vd * t
        return v


@dataclass
class _Person:
    d: float
    x: float  # metres from the vanishing line (negative = left)
    vx: float  # metres per frame
    phase: float
    height_m: float
    shirt: np.ndarray
    trousers: np.ndarray
    skin: np.ndarray
    hair: np.ndarray

    def at(self, t: float) -> _Person:
        p = _Person(**{**self.__dict__})
        p.x = self.x + self.vx * t
        p.phase = self.phase + abs(self.vx) * t * 4.0
        return p


@dataclass
class _Layout:
    street: _Street
    sky_top: np.ndarray
    sky_bottom: np.ndarray
    clouds: list
    sides: tuple[str, str]
    facades: list = field(default_factory=list)
    skyline: list = field(default_factory=list)
    trees: list = field(default_factory=list)
    road_colour: np.ndarray | None = None
    walk_colour: np.ndarray | None = None
    marking: np.ndarray | None = None
    dash_phase: float = 0.0
    vehicles: list = field(default_factory=list)
    people: list = field(default_factory=list)
    gain: float = 1.0
    cast: np.ndarray | None = None
    gradient: float = 0.0
    shadows: list = field(default_factory=list)
    sensor_sigma: float = 2.0
    lit_windows: float = 0.0
    noise_offsets: tuple = (0, 0, 0, 0)


def _make_layout(rng: np.random.Generator, h: int, w: int) -> _Layout:
    horizon = h * rng.uniform(0.36, 0.52)
    street = _Street(h, w, horizon, w * rng.uniform(0.3, 0.7), w * rng.uniform(0.32, 0.6), rng.uniform(1.5, 2.1))
    mood = rng.choice(["clear", "overcast", "dusk"], p=[0.5, 0.3, 0.2])
    if mood == "clear":
        top, bottom = _jitter(rng, (190, 120, 60), 25), _jitter(rng, (235, 205, 170), 20)
    elif mood == "overcast":
        top, bottom = _grey(rng, 150, 200, 8), _grey(rng, 190, 235, 8)
    else:
        top, bottom = _jitter(rng, (120, 80, 90), 25), _jitter(rng, (110, 170, 235), 25)
    clouds = []
    for _ in range(rng.integers(0, 6)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, horizon * 0.8)
        clouds.append(((cx, cy), (rng.uniform(0.05, 0.2) * w, rng.uniform(0.02, 0.06) * h), rng.uniform(0.3, 0.8)))
    sides = tuple(str(s) for s in rng.choice(["buildings", "park"], size=2, p=[0.75, 0.25]))
    lay = _Layout(street, top, bottom, clouds, sides)
    lay.road_colour = _grey(rng, 55, 120, 10)
    lay.walk_colour = _jitter(rng, (rng.uniform(120, 185),) * 3, 18)
    lay.marking = _jitter(rng, (225, 225, 225), 20) if rng.random() < 0.8 else _jitter(rng, (40, 200, 230), 20)
    lay.dash_phase = rng.uniform(0, 1)
    lay.lit_windows = 0.6 if mood == "dusk" else 0.05

    # facades: per side, segments in depth (log-uniform widths), each with its own height
    for side in (-1, 1):
        if lay.sides[(side + 1) // 2] != "buildings":
            continue
        d = rng.uniform(0.05, 0.1)
        while d < 1.6:
            d1 = d * rng.uniform(1.25, 1.9)
            lay.facades.append(
                dict(
                    side=side,
                    d0=d,
                    d1=d1,
                    height_m=rng.uniform(6, 22),
                    colour=_building_colour(rng),
                    rows_m=rng.uniform(2.8, 3.6),
                    cols=int(rng.integers(2, 6)),
                    win=_jitter(rng, (70, 60, 50), 30),
                    frame=rng.uniform(0.15, 0.35),
                )
            )
            d = d1
    # distant skyline near the vanishing point
    x = street.vx - w * rng.uniform(0.08, 0.2)
    x_end = street.vx + w * rng.uniform(0.08, 0.2)
    while x < x_end:
        bw = w * rng.uniform(0.015, 0.05)
        lay.skyline.append((x, bw, h * rng.uniform(0.03, 0.15), _building_colour(rng)))
        x += bw
    # trees: on sidewalks (both sides), and dense on park sides
    for side in (-1, 1):
        park = lay.sides[(side + 1) // 2] == "park"
        n = int(rng.integers(4, 9)) if park else int(rng.integers(0, 4))
        for _ in range(n):
            d = rng.uniform(0.1, 1.15)
            off = rng.uniform(1.1, lay.street.walk_factor * (1.6 if park else 0.95))
            lay.trees.append(
                dict(
                    side=side,
                    d=d,
                    off=off,
                    height_m=rng.uniform(4, 9),
                    crown_m=rng.uniform(1.6, 3.2),
                    green=_jitter(rng, rng.choice([(40, 110, 60), (30, 95, 85), (40, 120, 120), (25, 70, 40)]), 20),
                    trunk=_jitter(rng, (40, 60, 85), 15),
                    blobs=rng.uniform(-1, 1, size=(5, 3)),
                )
            )
    # vehicles: rear view in lanes (moving in depth), some side-view crossing/parked
    for _ in range(int(rng.integers(1, 6))):
        kind = rng.choice(["car", "van", "bus"], p=[0.75, 0.18, 0.07])
        lay.vehicles.append(
            _Vehicle(
                d=rng.uniform(0.15, 0.95) * (0.6 if kind == "bus" else 1.0),
                u=rng.uniform(-0.75, 0.75),
                vd=rng.uniform(-0.012, 0.012),
                view="rear",
                kind=str(kind),
                colour=_car_colour(rng),
                window=_grey(rng, 20, 70, 10),
            )
        )
    for _ in range(int(rng.integers(0, 3))):
        kind = rng.choice(["car", "van", "bus"], p=[0.75, 0.18, 0.07])
        lay.vehicles.append(
            _Vehicle(
                d=rng.uniform(0.35, 0.9) * (0.7 if kind == "bus" else 1.0),
                u=rng.uniform(-1.2, 1.2),
                vd=rng.uniform(-0.08, 0.08),
                view="side",
                kind=str(kind),
                colour=_car_colour(rng),
                window=_grey(rng, 20, 70, 10),
                facing=int(rng.choice([-1, 1])),
            )
        )
    # people: on sidewalks, a few crossing the road
    for _ in range(int(rng.integers(2, 8))):
        side = rng.choice([-1, 1])
        d = rng.uniform(0.5, 1.2)  # not too far: a person stays a few output-stride cells wide
        on_road = rng.random() < 0.2
        x_m = rng.uniform(-3, 3) if on_road else side * rng.uniform(3.8, 3.5 * lay.street.walk_factor)
        lay.people.append(
            _Person(
                d=d,
                x=x_m,
                vx=rng.uniform(-0.05, 0.05),
                phase=rng.uniform(0, 2 * np.pi),
                height_m=rng.uniform(1.55, 1.95),
                shirt=_clothes(rng),
                trousers=_clothes(rng),
                skin=_jitter(rng, rng.choice([(150, 180, 225), (90, 120, 170), (60, 80, 110)]), 15),
                hair=_grey(rng, 15, 90, 15),
            )
        )
    lay.gain = rng.uniform(0.6, 1.3)
    lay.cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    lay.gradient = rng.uniform(-0.35, 0.35)
    for _ in range(int(rng.integers(0, 3))):
        x0 = rng.uniform(-0.2, 1.0) * w
        lay.shadows.append(
            (
                [
                    (x0, horizon),
                    (x0 + rng.uniform(0.1, 0.5) * w, horizon),
                    (x0 + rng.uniform(0.2, 1.0) * w, h),
                    (x0 - rng.uniform(0.0, 0.5) * w, h),
                ],
                rng.uniform(0.55, 0.85),
            )
        )
    lay.sensor_sigma = rng.uniform(1.0, 6.0)
    lay.noise_offsets = tuple(int(v) for v in rng.integers(0, 1 << 30, size=4))
    return lay


def _building_colour(rng) -> np.ndarray:
    base = rng.choice(
        [
            (60, 80, 150),
            (90, 110, 170),
            (150, 170, 190),
            (120, 120, 120),
            (170, 170, 170),
            (100, 100, 90),
            (80, 90, 110),
            (190, 200, 210),
        ]
    )
    return _jitter(rng, base, 25)


def _car_colour(rng) -> np.ndarray:
    base = rng.choice(
        [
            (40, 40, 40),
            (200, 200, 200),
            (140, 140, 140),
            (40, 40, 180),
            (150, 60, 30),
            (60, 120, 60),
            (230, 230, 230),
            (80, 80, 90),
            (30, 150, 200),
        ]
    )
    return _jitter(rng, base, 20)


def _clothes(rng) -> np.ndarray:
    base = rng.choice(
        [
            (30, 30, 30),
            (120, 70, 30),
            (60, 60, 140),
            (180, 180, 180),
            (50, 100, 50),
            (100, 100, 100),
            (40, 40, 90),
            (160, 120, 90),
        ]
    )
    return _jitter(rng, base, 30)


# ------------------------------------------------------------------------------------------
# Painting
# ------------------------------------------------------------------------------------------
def _paint_static(lay: _Layout, c: _Canvas) -> None:
    s = lay.street
    h, w = c.h, c.w
    # sky: vertical gradient + soft clouds
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    c.img[:] = lay.sky_top * (1 - yy) + lay.sky_bottom * yy
    c.tex[:] = _TEX[SKY]
    for centre, axes, alpha in lay.clouds:
        col = lay.sky_bottom * (1 - alpha) + np.float32(245) * alpha
        c.ellipse(centre, axes, col, SKY)
        c.ellipse((centre[0] + axes[0] * 0.4, centre[1] - axes[1] * 0.5), (axes[0] * 0.5, axes[1] * 0.8), col, SKY)
    # distant skyline and park tree lines behind everything on the ground
    for x, bw, bh, col in lay.skyline:
        c.poly(
            [(x, s.horizon - bh), (x + bw, s.horizon - bh), (x + bw, s.horizon + 1), (x, s.horizon + 1)],
            col * 0.9,
            BUILDING,
        )
    for side in (-1, 1):
        if lay.sides[(side + 1) // 2] == "park":
            x_far = s.vx + side * s.apex * s.walk_factor
            x_edge = 0.0 if side < 0 else float(w)
            pts = [(x_far, s.horizon + 1)]
            n = 12
            for k in range(n + 1):
                x = x_far + (x_edge - x_far) * k / n
                bump = (math.sin(k * 1.7 + s.vx) * 0.5 + 0.8) * (s.h - s.horizon) * 0.12 * (0.3 + k / n)
                pts.append((x, s.horizon - bump))
            pts.append((x_edge, s.horizon + 1))
            c.poly(pts, _jitter(np.random.default_rng(int(s.vx)), (45, 100, 60), 10), VEGETATION)
    # ground: road, sidewalks (or grass on park sides)
    yb = s.h + 2.0
    dmax = (yb - s.horizon) / (s.h - s.horizon)
    for side in (-1, 1):
        park = lay.sides[(side + 1) // 2] == "park"
        inner = [(s.road_x(0, side), s.horizon), (s.road_x(dmax, side), yb)]
        outer_x = s.road_x(dmax, side * s.walk_factor)
        far_x = s.road_x(0, side * s.walk_factor)
        c.poly([inner[0], (far_x, s.horizon), (outer_x, yb), inner[1]], lay.walk_colour, SIDEWALK)
        # paving joints across the sidewalk (detail: keeps the label)
        for k in range(1, 14):
            d = (k / 14.0) ** 1.6 * dmax
            y = s.y(d)
            c.line(
                (s.road_x(d, side), y),
                (s.road_x(d, side * s.walk_factor), y),
                max(0.6, 1.2 * d),
                lay.walk_colour * 0.8,
                None,
            )
        edge = (0.0 if side < 0 else float(w)) + side * w
        beyond = [(far_x, s.horizon), (edge, s.horizon), (edge, yb), (outer_x, yb)]
        if park:
            c.poly(beyond, _jitter(np.random.default_rng(int(s.road_half)), (50, 130, 90), 15), VEGETATION)
        else:
            c.poly(beyond, lay.walk_colour * 0.9, SIDEWALK)
    c.poly(
        [(s.road_x(0, -1), s.horizon), (s.road_x(0, 1), s.horizon), (s.road_x(dmax, 1), yb), (s.road_x(dmax, -1), yb)],
        lay.road_colour,
        ROAD,
    )
    # lane markings: dashed centre line and solid edge lines (details on the road)
    n_dash = 10
    for k in range(n_dash):
        a = ((k + lay.dash_phase) / n_dash) ** 2 * dmax
        b = ((k + lay.dash_phase + 0.45) / n_dash) ** 2 * dmax
        wa, wb = 0.12 * s.ppm(a), 0.12 * s.ppm(b)
        c.poly(
            [
                (s.road_x(a, 0.0) - wa, s.y(a)),
                (s.road_x(a, 0.0) + wa, s.y(a)),
                (s.road_x(b, 0.0) + wb, s.y(b)),
                (s.road_x(b, 0.0) - wb, s.y(b)),
            ],
            lay.marking,
            None,
        )
    for u in (-0.93, 0.93):
        wb = 0.1 * s.ppm(dmax)
        c.poly(
            [
                (s.road_x(0, u), s.horizon),
                (s.road_x(0, u) + 0.3, s.horizon),
                (s.road_x(dmax, u) + wb, yb),
                (s.road_x(dmax, u) - wb, yb),
            ],
            lay.marking,
            None,
        )
    # facades, far to near on each side (nearer ones occlude farther ones)
    for f in sorted(lay.facades, key=lambda f: f["d0"]):
        _paint_facade(lay, c, f)
    for t in sorted(lay.trees, key=lambda t: t["d"]):
        _paint_tree(lay, c, t)


def _paint_facade(lay: _Layout, c: _Canvas, f: dict) -> None:
    s = lay.street
    side, d0, d1 = f["side"], f["d0"], f["d1"]
    u = side * s.walk_factor

    def base(d):
        return s.road_x(d, u), s.y(d)

    def top(d):
        x, y = base(d)
        return x, y - f["height_m"] * s.ppm(d)

    quad = [top(d0), top(d1), base(d1), base(d0)]  # TL, TR, BR, BL in "u,v" order
    c.poly(quad, f["colour"], BUILDING)
    rows = max(1, int(f["height_m"] / f["rows_m"]))
    cols = f["cols"]
    fr = f["frame"]
    # all window quads at once (one fillPoly per colour): u, v are facade coordinates
    k = np.arange(cols, dtype=np.float64)
    r = np.arange(rows, dtype=np.float64)
    u0, u1 = (k + fr) / cols, (k + 1 - fr) / cols
    v0, v1 = (r + fr) / rows, (r + 1 - fr) / rows
    uu = np.stack([u0, u1, u1, u0], axis=1)[None, :, :]  # 1 x cols x 4
    vv = np.stack([v0, v0, v1, v1], axis=1)[:, None, :]  # rows x 1 x 4
    q = np.asarray(quad, np.float64)
    top = q[0] + (q[1] - q[0]) * uu[..., None]
    bottom = q[3] + (q[2] - q[3]) * uu[..., None]
    pts = top + (bottom - top) * vv[..., None]  # rows x cols x 4 x 2
    lit = np.random.default_rng(int(d0 * 1e6) + cols).random((rows, cols)) < lay.lit_windows
    for mask, col in ((~lit, f["win"]), (lit, np.asarray((120, 210, 245), np.float32))):
        if mask.any():
            c.polys(pts[mask], col, tex=(1.5, 2.0))
    # a darker ground-floor band (shops), and a cornice line
    band = [
        _quad_point(quad, 0, 1 - 1.0 / rows),
        _quad_point(quad, 1, 1 - 1.0 / rows),
        _quad_point(quad, 1, 1),
        _quad_point(quad, 0, 1),
    ]
    c.poly(band, f["colour"] * 0.6, None)
    c.line(_quad_point(quad, 0, 0.01), _quad_point(quad, 1, 0.01), max(1.0, 0.25 * s.ppm(d0)), f["colour"] * 0.75, None)


def _paint_tree(lay: _Layout, c: _Canvas, t: dict) -> None:
    s = lay.street
    d = t["d"]
    ppm = s.ppm(d)
    x, y = s.road_x(d, t["side"] * t["off"]), s.y(d)
    top = y - t["height_m"] * ppm
    c.line((x, y), (x, top + t["crown_m"] * ppm), max(1.5, 0.3 * ppm), t["trunk"], VEGETATION)
    r = t["crown_m"] * ppm
    for bx, by, br in t["blobs"]:
        col = np.clip(t["green"] * (1.0 + 0.15 * br), 0, 255)
        c.ellipse(
            (x + bx * r * 0.6, top + r + by * r * 0.4), (r * (0.7 + 0.2 * br), r * (0.6 + 0.15 * bx)), col, VEGETATION
        )


def _paint_vehicle(lay: _Layout, c: _Canvas, v: _Vehicle) -> None:
    s = lay.street
    ppm = s.ppm(v.d)
    y = s.y(v.d)
    dims = {"car": (1.8, 1.45, 4.3), "van": (2.0, 2.1, 5.0), "bus": (2.5, 3.1, 11.0)}[v.kind]
    width_m, height_m, length_m = dims
    shadow = lay.road_colour * 0.35
    if v.view == "rear":
        x = s.road_x(v.d, v.u)
        w2 = width_m * ppm / 2
        hh = height_m * ppm
        c.poly(
            [
                (x - w2 * 1.05, y + 0.08 * ppm),
                (x + w2 * 1.05, y + 0.08 * ppm),
                (x + w2, y - 0.1 * ppm),
                (x - w2, y - 0.1 * ppm),
            ],
            shadow,
            None,
        )
        # wheels, body, cabin, rear window, lights, plate
        for sx in (-1, 1):
            c.poly(
                [
                    (x + sx * w2 * 0.95, y),
                    (x + sx * w2 * 0.6, y),
                    (x + sx * w2 * 0.6, y - 0.4 * ppm),
                    (x + sx * w2 * 0.95, y - 0.4 * ppm),
                ],
                (20, 20, 20),
                VEHICLE,
            )
        body_top = y - (0.55 if v.kind == "car" else 0.85) * hh
        c.poly(
            [(x - w2, y - 0.18 * ppm), (x + w2, y - 0.18 * ppm), (x + w2, body_top), (x - w2, body_top)],
            v.colour,
            VEHICLE,
        )
        inset = 0.18 if v.kind == "car" else 0.03
        c.poly(
            [
                (x - w2 * 0.97, body_top + 1),
                (x + w2 * 0.97, body_top + 1),
                (x + w2 * (1 - inset), y - hh),
                (x - w2 * (1 - inset), y - hh),
            ],
            v.colour * 0.92,
            VEHICLE,
        )
        wy0 = body_top - 0.08 * hh
        wy1 = y - hh + 0.08 * hh
        c.poly(
            [
                (x - w2 * 0.85, wy0),
                (x + w2 * 0.85, wy0),
                (x + w2 * (0.95 - inset), wy1),
                (x - w2 * (0.95 - inset), wy1),
            ],
            v.window,
            None,
        )
        for sx in (-1, 1):
            c.poly(
                [
                    (x + sx * w2 * 0.95, body_top + 0.1 * hh),
                    (x + sx * w2 * 0.7, body_top + 0.1 * hh),
                    (x + sx * w2 * 0.7, body_top + 0.2 * hh),
                    (x + sx * w2 * 0.95, body_top + 0.2 * hh),
                ],
                (30, 30, 200),
                None,
            )
        c.poly(
            [
                (x - 0.25 * ppm, y - 0.45 * ppm),
                (x + 0.25 * ppm, y - 0.45 * ppm),
                (x + 0.25 * ppm, y - 0.3 * ppm),
                (x - 0.25 * ppm, y - 0.3 * ppm),
            ],
            (230, 230, 230),
            None,
        )
    else:
        x = s.vx + v.u * s.road_half * v.d * 1.5
        L = length_m * ppm
        hh = height_m * ppm
        f = v.facing
        x0, x1 = x - L / 2, x + L / 2
        c.poly([(x0, y + 0.05 * ppm), (x1, y + 0.05 * ppm), (x1, y - 0.1 * ppm), (x0, y - 0.1 * ppm)], shadow, None)
        body_top = y - (0.55 if v.kind == "car" else 0.9) * hh
        c.poly([(x0, y - 0.25 * ppm), (x1, y - 0.25 * ppm), (x1, body_top), (x0, body_top)], v.colour, VEHICLE)
        if v.kind == "car":
            front, back = (x1, x0) if f > 0 else (x0, x1)
            cab = [
                (back - f * 0.1 * L, body_top + 1),
                (front - f * 0.22 * L, body_top + 1),
                (front - f * 0.38 * L, y - hh),
                (back + f * 0.02 * L, y - hh),
            ]
            c.poly(cab, v.colour * 0.95, VEHICLE)
            c.poly(
                [
                    _lerp(cab[0], cab[3], 0.15),
                    _lerp(cab[1], cab[2], 0.15),
                    _lerp(cab[1], cab[2], 0.85),
                    _lerp(cab[0], cab[3], 0.85),
                ],
                v.window,
                None,
            )
        else:
            c.poly([(x0, body_top + 1), (x1, body_top + 1), (x1, y - hh), (x0, y - hh)], v.colour * 0.95, VEHICLE)
            n_win = 3 if v.kind == "van" else 6
            for k in range(n_win):
                a = x0 + L * (0.05 + 0.9 * k / n_win)
                b = a + L * 0.9 / n_win * 0.8
                c.poly([(a, y - hh * 0.92), (b, y - hh * 0.92), (b, y - hh * 0.62), (a, y - hh * 0.62)], v.window, None)
        r = 0.33 * ppm
        for wx in (x0 + 0.2 * L, x1 - 0.2 * L):
            c.ellipse((wx, y - r), (r, r), (20, 20, 20), VEHICLE)
            c.ellipse((wx, y - r), (r * 0.45, r * 0.45), (150, 150, 150), None)


def _lerp(a, b, t):
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def _paint_person(lay: _Layout, c: _Canvas, p: _Person) -> None:
    s = lay.street
    ppm = s.ppm(p.d)
    y = s.y(p.d)
    x = s.vx + p.x * ppm
    hgt = p.height_m * ppm
    head_r = 0.12 * hgt
    hip_y = y - 0.5 * hgt
    shoulder_y = y - 0.8 * hgt
    limb = max(2.5, 0.24 * ppm)
    swing = math.sin(p.phase) * 0.1 * hgt
    # shadow, legs, coat (to the knees), arms, head, hair: chunky enough to span a few
    # output-stride cells, as people in coats do
    c.ellipse((x, y), (0.35 * ppm, 0.07 * ppm), lay.walk_colour * 0.5, None)
    knee_y = y - 0.3 * hgt
    c.line((x - 0.05 * hgt, knee_y), (x - 0.05 * hgt + swing, y), limb * 1.3, p.trousers, PERSON)
    c.line((x + 0.05 * hgt, knee_y), (x + 0.05 * hgt - swing, y), limb * 1.3, p.trousers * 0.9, PERSON)
    torso_w = 0.16 * hgt
    c.poly(
        [
            (x - torso_w, shoulder_y),
            (x + torso_w, shoulder_y),
            (x + torso_w * 0.95, knee_y),
            (x - torso_w * 0.95, knee_y),
        ],
        p.shirt,
        PERSON,
    )
    c.line((x - torso_w * 0.9, hip_y), (x + torso_w * 0.9, hip_y), max(1.0, 0.05 * ppm), p.shirt * 0.7, None)
    for sx in (-1, 1):
        c.line(
            (x + sx * torso_w * 0.95, shoulder_y + limb / 2),
            (x + sx * torso_w * 1.1 - swing * 0.3, hip_y + 0.02 * hgt),
            limb * 1.2,
            p.shirt * 0.9,
            PERSON,
        )
    c.line((x, shoulder_y + 2), (x, shoulder_y - head_r * 0.6), limb * 1.2, p.skin, PERSON)
    c.ellipse((x, shoulder_y - head_r * 1.1), (head_r * 0.9, head_r), p.skin, PERSON)
    c.ellipse((x, shoulder_y - head_r * 1.6), (head_r * 0.9, head_r * 0.55), p.hair, PERSON)


def _paint_dynamic(lay: _Layout, c: _Canvas, t: float) -> None:
    """Vehicles and people at time ``t`` (frames), painted far to near."""
    items = [(v.at(t), _paint_vehicle) for v in lay.vehicles] + [(p.at(t), _paint_person) for p in lay.people]
    items.sort(key=lambda it: it[0].d)
    for obj, paint in items:
        paint(lay, c, obj)


class _NoiseBank:
    """Precomputed texture noise (2H×2W), cropped at random offsets per scene: fast and seeded."""

    def __init__(self, height: int, width: int, seed: int):
        rng = np.random.default_rng([seed, 0x7E57])
        h2, w2 = 2 * height, 2 * width
        self.fine = rng.standard_normal((h2, w2), dtype=np.float32)
        small = rng.standard_normal((max(2, h2 // 4), max(2, w2 // 4)), dtype=np.float32)
        mid = cv2.resize(small, (w2, h2), interpolation=cv2.INTER_CUBIC)
        self.mid = mid / max(float(mid.std()), 1e-6)
        self.sensor = rng.standard_normal((h2, w2, 3), dtype=np.float32)
        self.h, self.w = height, width

    def crop(self, arr: np.ndarray, offset: int) -> np.ndarray:
        oy = offset % self.h
        ox = (offset // self.h) % self.w
        return arr[oy : oy + self.h, ox : ox + self.w]


def _finish(lay: _Layout, c: _Canvas, bank: _NoiseBank, frame: int = 0) -> np.ndarray:
    """Texture, lighting, shadows and sensor noise → uint8 BGR image."""
    o = lay.noise_offsets
    tex = c.tex
    img = c.img
    img += (tex[:, :, 0] * bank.crop(bank.fine, o[0]) + tex[:, :, 1] * bank.crop(bank.mid, o[1]))[:, :, None]
    light = np.full((c.h, c.w), lay.gain, np.float32)
    light *= (1.0 + lay.gradient * (np.linspace(-0.5, 0.5, c.w, dtype=np.float32)))[None, :]
    if lay.shadows:
        mask = np.ones((c.h, c.w), np.float32)
        for pts, factor in lay.shadows:
            cv2.fillPoly(mask, [_Canvas._fix(pts)], float(factor), cv2.LINE_8, _SHIFT)
        sky = c.lab == SKY
        mask[sky] = 1.0
        light *= mask
    img *= light[:, :, None]
    img *= lay.cast
    img += lay.sensor_sigma * bank.crop(bank.sensor, o[2] + 7919 * frame)
    out = np.clip(img, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(out, (3, 3), 0.6)


class SceneGenerator:
    """Seeded street scenes: ``scene(i) -> (bgr uint8 H×W×3, labels uint8 H×W)``.

    Same (height, width, seed, i) → identical arrays, on any machine with the same numpy and
    OpenCV. Different seeds or indices give different layouts, colours and textures.
    """

    classes = CLASSES
    palette = PALETTE

    def __init__(self, height: int = 256, width: int = 512, seed: int = 0):
        if height < 16 or width < 16:
            raise ValueError(f"scene size {height}x{width} too small (min 16x16)")
        self.height, self.width, self.seed = int(height), int(width), int(seed)
        self._bank = _NoiseBank(self.height, self.width, self.seed)

    def _layout(self, index: int) -> _Layout:
        rng = np.random.default_rng([self.seed, int(index)])
        return _make_layout(rng, self.height, self.width)

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        lay = self._layout(index)
        c = _Canvas(self.height, self.width)
        _paint_static(lay, c)
        _paint_dynamic(lay, c, 0.0)
        return _finish(lay, c, self._bank), c.lab

    def scenes(self, n: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(start, start + n):
            yield self.scene(i)

    def video_frames(self, n: int, index: int = 0, speed: float = 1.0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``n`` frames of one street (layout ``index``) with moving vehicles and walking people."""
        lay = self._layout(index)
        static = _Canvas(self.height, self.width)
        _paint_static(lay, static)
        for f in range(n):
            c = static.copy()
            _paint_dynamic(lay, c, f * speed)
            yield _finish(lay, c, self._bank, frame=f), c.lab


def render_video(seed: int, n_frames: int, size: tuple[int, int] = (256, 512), index: int = 0):
    """List of ``n_frames`` (frame, labels) pairs of one moving street; ``size`` is (height, width)."""
    return list(SceneGenerator(size[0], size[1], seed).video_frames(n_frames, index=index))


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """Labels → BGR picture with :data:`PALETTE` (for looking at the data)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(PALETTE)] = np.asarray(PALETTE, np.uint8)[:, ::-1]
    return lut[labels]
