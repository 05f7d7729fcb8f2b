"""Synthetic video with exact ground truth: a camera driving down a textured canyon, corridor or open terrain.

World frame is right-handed and y-up; the camera looks down +z, so its right-hand
side is world -x. Camera frame is OpenCV (x right, y down, z forward) and K maps a
camera point to integer pixel indices (pixel (u, v) sits at u, v, not u + 0.5).
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from pipeline.io.storage import atomic_path
from pipeline.stereo.packing import STEREO_LAYOUTS, pack_views

EYE_HEIGHT_M = 1.5
YAW_PERIOD_S = 5.0
ROLL_PERIOD_S = 7.0

# canyon: walls on both sides, open sky. corridor: narrow walls, a ceiling and an end wall (no sky).
# terrain: open ground with crates and pillars scattered at many depths, no walls.
Family = Literal["canyon", "corridor", "terrain"]
FAMILIES: tuple[Family, ...] = ("canyon", "corridor", "terrain")

_TEX_SIZE = 512  # texels per tile side at mip level 0
_TEX_OCTAVES = 9  # log2(_TEX_SIZE): the finest noise octave is one texel
_TEXEL_M = 4.0 / _TEX_SIZE  # a tile covers 4 m, so wrap-around repeats are rare on screen
_MIP_LEVELS = 6
_N_TILES = 5  # ground, wall +x, wall -x, boxes, roof/far wall
_BOX_SPACING_M = 7.0
_FAR_WALL_MARGIN_M = 150.0
_BAND_PIXELS = 1 << 16

# Surface ids (uint8, so per-pixel properties come from cv2.LUT, far faster than fancy
# indexing). Box faces are split by outward normal so shading needs no per-pixel branching.
_GROUND, _WALL_POS, _WALL_NEG, _ROOF, _FAR = 0, 1, 2, 3, 4
_BOX_FACE = 5  # + 2*axis + (0 for +normal, 1 for -normal)
_SKY = 255
_NORMALS = np.array(
    [
        [0, 1, 0],
        [-1, 0, 0],
        [1, 0, 0],
        [0, -1, 0],
        [0, 0, -1],
        [1, 0, 0],
        [-1, 0, 0],
        [0, 1, 0],
        [0, -1, 0],
        [0, 0, 1],
        [0, 0, -1],
    ],
    dtype=np.float32,
)


def _surface_table(values: np.ndarray) -> np.ndarray:
    """256-entry float32 table for cv2.LUT; unused ids (sky included) get the ground's value."""
    table = np.full(256, values[_GROUND], dtype=np.float32)
    table[: len(values)] = values
    return table


_AXIS_TABLE = _surface_table(np.abs(_NORMALS).argmax(axis=1))
_TILE_TABLE = _surface_table(np.array([0, 1, 2, 4, 4, 3, 3, 3, 3, 3, 3]))


@dataclass(frozen=True)
class MovingObject:
    """A textured box moving independently of the scene: at constant world velocity, or rigidly with the camera.

    `centre` is the box centre at t = 0 in world coordinates, or, when `attached`, in the camera frame
    (OpenCV axes; fixed there, so the box keeps its image position while the camera moves). The texture
    is fixed to the box, so its appearance moves with it.
    """

    size: tuple[float, float, float] = (1.0, 1.0, 1.0)  # extent along x, y, z of its frame, metres
    centre: tuple[float, float, float] = (0.0, 0.5, 10.0)
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)  # world m/s; unused when attached
    attached: bool = False


@dataclass(frozen=True)
class SceneSpec:
    """What to render: image size, timing, seed and camera motion."""

    width: int = 320
    height: int = 180
    fps: float = 10.0
    duration_s: float = 6.0
    seed: int = 0
    speed_mps: float = 2.0  # forward speed of the camera
    yaw_amplitude_deg: float = 4.0  # gentle left-right sway so motion is not a pure translation
    hfov_deg: float = 70.0
    baseline_m: float = 0.0  # >0: also render a right view shifted by baseline along camera x
    sky: bool = True  # textureless sky band above the horizon
    objects: tuple[MovingObject, ...] = ()  # independently moving boxes; none by default
    family: Family = "canyon"  # the scene's layout; `draw_scene` draws one with a varied camera
    eye_height_m: float = EYE_HEIGHT_M
    pitch_deg: float = 0.0  # the camera tilted down (+) or up (-) about its x axis
    roll_amplitude_deg: float = 0.0  # sinusoidal roll about the optical axis, period ROLL_PERIOD_S


@dataclass(frozen=True)
class RenderedFrame:
    """One rendered time step with its ground truth."""

    image: np.ndarray  # HxWx3 uint8 BGR (left view)
    depth: np.ndarray  # HxW float32 metres, z in camera frame; np.inf for sky
    sky_mask: np.ndarray  # HxW bool
    pose: np.ndarray  # 4x4 float64 camera-to-world
    right_image: np.ndarray | None = None  # when baseline_m > 0
    right_depth: np.ndarray | None = None
    # HxW uint8 when spec.objects: 0 on the scene, i + 1 where spec.objects[i] is seen (left view).
    object_index: np.ndarray | None = None


@dataclass(frozen=True)
class _Scene:
    wall_pos_x: float  # wall on the camera's left
    wall_neg_x: float  # wall on the camera's right (negative)
    wall_height: float
    fog_m: float
    fog_bgr: np.ndarray
    sky_zenith_bgr: np.ndarray
    shade_table: np.ndarray  # sun-lit brightness per surface id, for cv2.LUT
    atlas: np.ndarray  # float32, every tile at every mip level
    boxes: np.ndarray  # (N, 6) min xyz, max xyz
    closed: bool  # no sky: roof at wall height and a far wall
    far_z: float
    walls: bool = True  # False: open terrain, nothing at wall_pos_x / wall_neg_x


def intrinsics(spec: SceneSpec) -> np.ndarray:
    """Pinhole K (pixels) with square pixels and the principal point at the image centre."""
    fx = (spec.width / 2.0) / math.tan(math.radians(spec.hfov_deg) / 2.0)
    return np.array([[fx, 0.0, spec.width / 2.0], [0.0, fx, spec.height / 2.0], [0.0, 0.0, 1.0]])


def normalized_intrinsics(spec: SceneSpec) -> tuple[float, float, float, float]:
    """(fx/W, fy/H, cx/W, cy/H), the resolution-free form depth networks take."""
    k = intrinsics(spec)
    w, h = spec.width, spec.height
    return (float(k[0, 0] / w), float(k[1, 1] / h), float(k[0, 2] / w), float(k[1, 2] / h))


def num_frames(spec: SceneSpec) -> int:
    """Frame count render_frames yields."""
    return int(round(spec.duration_s * spec.fps))


def camera_pose(spec: SceneSpec, t_s: float) -> np.ndarray:
    """Camera-to-world 4x4 at time t_s: forward at speed_mps, yaw swaying sinusoidally."""
    yaw = math.radians(spec.yaw_amplitude_deg) * math.sin(2.0 * math.pi * t_s / YAW_PERIOD_S)
    c, s = math.cos(yaw), math.sin(yaw)
    yaw_rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    # OpenCV camera axes in a y-up world: x flips to keep the rotation proper.
    cam_to_world = np.diag([-1.0, -1.0, 1.0])
    pose = np.eye(4)
    pose[:3, :3] = yaw_rot @ cam_to_world
    if spec.pitch_deg or spec.roll_amplitude_deg:  # skipped when level: default renders stay bit-identical
        pose[:3, :3] = pose[:3, :3] @ _tilt(spec, t_s)
    pose[:3, 3] = (0.0, spec.eye_height_m, spec.speed_mps * t_s)
    return pose


def _tilt(spec: SceneSpec, t_s: float) -> np.ndarray:
    """Camera-frame rotation: pitch about x (positive looks down, towards camera +y), then roll about z."""
    pitch = -math.radians(spec.pitch_deg)
    roll = math.radians(spec.roll_amplitude_deg) * math.sin(2.0 * math.pi * t_s / ROLL_PERIOD_S)
    cp, sp, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    about_z = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return about_x @ about_z


def draw_scene(
    seed: int,
    *,
    width: int = 320,
    height: int = 180,
    fps: float = 10.0,
    duration_s: float = 6.0,
    family: Family | None = None,
) -> SceneSpec:
    """A scene of `family` (drawn from FAMILIES when None) with a camera drawn from seed: focal length, height,
    tilt, roll, sway and speed vary, so scenes share neither one layout nor one camera."""
    rng = np.random.default_rng([seed, 18])  # a stream of its own: the scene's content draws from seed alone
    drawn: Family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    eye_low, eye_high = (1.2, 1.8) if (family or drawn) == "corridor" else (1.0, 2.5)
    return SceneSpec(
        width=width,
        height=height,
        fps=fps,
        duration_s=duration_s,
        seed=seed,
        family=family or drawn,
        hfov_deg=float(rng.uniform(50.0, 90.0)),
        eye_height_m=float(rng.uniform(eye_low, eye_high)),
        pitch_deg=float(rng.uniform(-3.0, 12.0)),
        roll_amplitude_deg=float(rng.uniform(0.0, 10.0)) if rng.random() < 0.5 else 0.0,
        yaw_amplitude_deg=float(rng.uniform(0.0, 8.0)),
        speed_mps=float(rng.uniform(1.5, 3.0)),
    )


def right_camera_pose(pose: np.ndarray, baseline_m: float) -> np.ndarray:
    """Pose of a stereo partner shifted by baseline_m along the camera's +x."""
    right = pose.copy()
    right[:3, 3] = pose[:3, 3] + baseline_m * pose[:3, 0]
    return right


def render_frames(spec: SceneSpec) -> Iterator[RenderedFrame]:
    """Yield int(round(duration_s * fps)) frames, rendering each on demand."""
    scene = _make_scene(spec)
    k = intrinsics(spec)
    for i in range(num_frames(spec)):
        pose = camera_pose(spec, i / spec.fps)
        objects = _placed_objects(spec.objects, pose, i / spec.fps)
        image, depth, sky, index = _render_view(scene, k, pose, spec.width, spec.height, objects)
        right_image: np.ndarray | None = None
        right_depth: np.ndarray | None = None
        if spec.baseline_m > 0:
            right_pose = right_camera_pose(pose, spec.baseline_m)
            right_image, right_depth, _, _ = _render_view(scene, k, right_pose, spec.width, spec.height, objects)
        yield RenderedFrame(image, depth, sky, pose, right_image, right_depth, index if spec.objects else None)


def _placed_objects(
    objects: tuple[MovingObject, ...], pose: np.ndarray, t_s: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box in its own frame as min xyz, max xyz; its frame-to-world 4x4) of each object at time t_s."""
    placed = []
    for obj in objects:
        half = np.asarray(obj.size, np.float64) / 2.0
        centre = np.asarray(obj.centre, np.float64)
        if obj.attached:  # the box is fixed in the camera frame
            to_world = pose
        else:  # a translating frame: texture coordinates follow the box
            to_world = np.eye(4)
            to_world[:3, 3] = np.asarray(obj.velocity, np.float64) * t_s
        placed.append((np.concatenate([centre - half, centre + half]), to_world))
    return placed


# ---------------------------------------------------------------- scene and textures


def _make_scene(spec: SceneSpec) -> _Scene:
    if spec.family == "corridor":
        return _corridor(spec)
    if spec.family == "terrain":
        return _terrain(spec)
    return _canyon(spec)


def _canyon(spec: SceneSpec) -> _Scene:
    rng = np.random.default_rng(spec.seed)
    wall_height = float(rng.uniform(3.5, 6.0))
    wall_pos, wall_neg = float(rng.uniform(4.0, 6.0)), -float(rng.uniform(4.0, 6.0))
    horizon = _hsv_to_bgr(rng.uniform(180, 230), rng.uniform(0.05, 0.25), rng.uniform(0.8, 0.95))
    zenith = _hsv_to_bgr(rng.uniform(200, 225), rng.uniform(0.45, 0.7), rng.uniform(0.6, 0.85))
    sun = np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(-0.8, 0.2)], dtype=np.float32)
    lambert = np.clip(_NORMALS @ (sun / np.linalg.norm(sun)), 0.0, 1.0)
    z_max = spec.speed_mps * max(spec.duration_s, 0.0)
    return _Scene(
        wall_pos_x=wall_pos,
        wall_neg_x=wall_neg,
        wall_height=wall_height,
        fog_m=float(rng.uniform(40.0, 80.0)),
        fog_bgr=horizon,
        sky_zenith_bgr=zenith,
        shade_table=_surface_table(0.55 + 0.45 * lambert),
        atlas=_mip_atlas(_textures(rng, _N_TILES)),
        boxes=_boxes(rng, wall_pos, wall_neg, wall_height, z_max + _FAR_WALL_MARGIN_M),
        closed=not spec.sky,
        far_z=z_max + _FAR_WALL_MARGIN_M,
    )


def _corridor(spec: SceneSpec) -> _Scene:
    """A narrow closed corridor: walls 1.3-2.5 m from the path, a ceiling above the eye, an end wall ahead."""
    rng = np.random.default_rng(spec.seed)
    wall_pos, wall_neg = float(rng.uniform(1.3, 2.5)), -float(rng.uniform(1.3, 2.5))
    wall_height = spec.eye_height_m + float(rng.uniform(0.8, 2.0))
    far_z = spec.speed_mps * max(spec.duration_s, 0.0) + float(rng.uniform(12.0, 40.0))
    fog = _hsv_to_bgr(rng.uniform(0, 360), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.6))
    return _Scene(
        wall_pos_x=wall_pos,
        wall_neg_x=wall_neg,
        wall_height=wall_height,
        fog_m=float(rng.uniform(25.0, 60.0)),
        fog_bgr=fog,
        sky_zenith_bgr=fog,
        shade_table=_shade_table(rng),
        atlas=_mip_atlas(_textures(rng, _N_TILES)),
        boxes=_scattered_boxes(rng, (wall_neg + 0.5, wall_pos - 0.5), 0.6, (0.3, min(1.5, wall_height)), far_z, 3.0),
        closed=True,
        far_z=far_z,
    )


def _terrain(spec: SceneSpec) -> _Scene:
    """Open ground to the horizon with crates and pillars from beside the path to tens of metres away."""
    rng = np.random.default_rng(spec.seed)
    z_end = spec.speed_mps * max(spec.duration_s, 0.0) + _FAR_WALL_MARGIN_M
    horizon = _hsv_to_bgr(rng.uniform(180, 230), rng.uniform(0.05, 0.25), rng.uniform(0.8, 0.95))
    zenith = _hsv_to_bgr(rng.uniform(200, 225), rng.uniform(0.45, 0.7), rng.uniform(0.6, 0.85))
    return _Scene(
        wall_pos_x=math.inf,
        wall_neg_x=-math.inf,
        wall_height=8.0,  # the roof's height when closed (spec.sky false): a hall
        fog_m=float(rng.uniform(50.0, 100.0)),
        fog_bgr=horizon,
        sky_zenith_bgr=zenith,
        shade_table=_shade_table(rng),
        atlas=_mip_atlas(_textures(rng, _N_TILES)),
        boxes=_scattered_boxes(rng, (-25.0, 25.0), 3.0, (0.4, 6.0), z_end, 1.2),
        closed=not spec.sky,
        far_z=z_end,
        walls=False,
    )


def _shade_table(rng: np.random.Generator) -> np.ndarray:
    """Sun-lit brightness per surface id for a sun direction drawn from rng."""
    sun = np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(-0.8, 0.2)], dtype=np.float32)
    return _surface_table(0.55 + 0.45 * np.clip(_NORMALS @ (sun / np.linalg.norm(sun)), 0.0, 1.0))


def _scattered_boxes(
    rng: np.random.Generator,
    x_range: tuple[float, float],
    max_side: float,
    heights: tuple[float, float],
    z_end: float,
    spacing_m: float,
) -> np.ndarray:
    """Boxes inside x_range, one about every spacing_m of z, none within 0.6 m of the camera's path at x = 0."""
    rows = []
    z = -10.0 + rng.uniform(0, spacing_m)
    while z < z_end:
        side = 1.0 if rng.random() < 0.5 else -1.0
        limit = x_range[1] if side > 0 else -x_range[0]
        size_x, size_z = rng.uniform(0.3, max_side), rng.uniform(0.3, max_side)
        inner = rng.uniform(0.6, max(0.6, limit - size_x))
        x0, x1 = sorted((side * inner, side * min(inner + size_x, limit)))
        rows.append([x0, 0.0, z, x1, rng.uniform(*heights), z + size_z])
        z += rng.uniform(0.3, 1.7) * spacing_m
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def _hsv_to_bgr(hue_deg: float, sat: float, val: float) -> np.ndarray:
    hsv = np.array([[[hue_deg, sat, val]]], dtype=np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0] * 255.0


def _textures(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Tileable coloured multi-octave noise tiles, float32 BGR in [0, 255]."""
    detail = _fractal_noise(rng, count, octaves=range(2, _TEX_OCTAVES + 1), roughness=0.85)
    patches = _fractal_noise(rng, count, octaves=range(1, 6), roughness=0.6)
    return [_colourise(rng, detail[..., i], patches[..., i]) for i in range(count)]


def _colourise(rng: np.random.Generator, detail: np.ndarray, patches: np.ndarray) -> np.ndarray:
    hue = rng.uniform(0, 360)
    base = _hsv_to_bgr(hue, rng.uniform(0.2, 0.7), rng.uniform(0.35, 0.7))
    other = _hsv_to_bgr((hue + rng.uniform(20, 120)) % 360, rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.8))
    # A steep sigmoid makes patch borders crisp: corners that flow and matchers can lock on.
    mix = 1.0 / (1.0 + np.exp(-4.0 * patches))
    gain = 1.0 + 0.35 * detail
    planes = [(float(b) + float(o - b) * mix) * gain for b, o in zip(base, other)]
    return np.clip(cv2.merge(planes), 0, 255)


def _fractal_noise(rng: np.random.Generator, count: int, octaves: Iterable[int], roughness: float) -> np.ndarray:
    """count channels of tileable upsampled white noise summed over octaves, each with unit std."""
    total = np.zeros((_TEX_SIZE, _TEX_SIZE, count), np.float32)
    for octave in octaves:
        cells = 2**octave
        noise = rng.standard_normal((cells, cells, count)).astype(np.float32)
        total += roughness ** (_TEX_OCTAVES - octave) * _tileable_upsample(noise, _TEX_SIZE)
    return (total - total.mean(axis=(0, 1))) / total.std(axis=(0, 1))


def _tileable_upsample(noise: np.ndarray, size: int) -> np.ndarray:
    # Wrap-padding before resizing keeps the result periodic, so wrap-around sampling has no seams.
    cells = noise.shape[0]
    if cells == size:
        return noise
    factor, pad = size // cells, 2
    padded = np.pad(noise, ((pad, pad), (pad, pad), (0, 0)), mode="wrap")
    up = cv2.resize(padded, (padded.shape[1] * factor,) * 2, interpolation=cv2.INTER_CUBIC)
    return up[pad * factor : pad * factor + size, pad * factor : pad * factor + size]


def _mip_atlas(tiles: list[np.ndarray]) -> np.ndarray:
    """All mip levels of all tiles in one float32 image: levels left to right, tiles top to bottom.

    Each tile keeps a 1-texel wrapped border so bilinear lookups near an edge wrap instead of
    bleeding into the neighbour, and one remap can serve any mix of tiles and levels.
    """
    columns = []
    for level in range(_MIP_LEVELS):
        size = _TEX_SIZE >> level
        small = [cv2.resize(t, (size, size), interpolation=cv2.INTER_AREA) for t in tiles]
        column = np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), mode="wrap") for t in small])
        columns.append(np.pad(column, ((0, len(tiles) * (_TEX_SIZE + 2) - column.shape[0]), (0, 0), (0, 0))))
    return np.concatenate(columns, axis=1)


def _boxes(rng: np.random.Generator, wall_pos: float, wall_neg: float, wall_height: float, z_end: float) -> np.ndarray:
    """Crates and pillars against the walls, clear of the camera's path at x = 0."""
    rows = []
    z = -10.0 + rng.uniform(0, _BOX_SPACING_M)
    while z < z_end:
        side_wall = wall_pos if rng.random() < 0.5 else wall_neg
        size_x, size_z = rng.uniform(0.5, 1.5), rng.uniform(0.5, 2.5)
        height = rng.uniform(0.6, min(wall_height, 4.0))
        gap = rng.uniform(0.0, 0.8)
        outer = side_wall - math.copysign(gap, side_wall)
        inner = outer - math.copysign(size_x, side_wall)
        rows.append([min(inner, outer), 0.0, z, max(inner, outer), height, z + size_z])
        z += size_z + rng.uniform(0.5, 2.0) * _BOX_SPACING_M
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


# ---------------------------------------------------------------- ray casting

# Ray casting works on planar per-axis arrays: ray directions are (dx, dy, dz) planes; an origin is
# (ox, oy, oz), each a float (one camera) or a plane (per pixel, for pixels shaded in an object's frame).
_Rays = Sequence[np.ndarray]
_Origin = Sequence[float | np.ndarray]
_Roi = tuple[slice, slice]  # (rows, columns) of the screen a box can cover


def _render_view(
    scene: _Scene,
    k: np.ndarray,
    pose: np.ndarray,
    width: int,
    height: int,
    objects: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cast one ray per pixel; return (BGR uint8 image, depth float32, sky bool, object index uint8).

    objects are `_placed_objects`' boxes; the index is 0 on the scene and i + 1 on objects[i].
    """
    image = np.empty((height, width, 3), np.uint8)
    depth = np.empty((height, width), np.float32)
    surf = np.empty((height, width), np.uint8)
    index = np.zeros((height, width), np.uint8)
    # Python floats: NumPy 2 would promote float32 arrays to float64 against np.float64 scalars.
    origin = tuple(float(v) for v in pose[:3, 3])
    boxes = [(box, roi) for box in scene.boxes if (roi := _box_roi(box, k, pose, width, height)) is not None]
    # Each object is ray cast in its own frame: the view's pose relative to it gives rays and screen area.
    local: list[tuple[int, np.ndarray, np.ndarray, _Roi]] = []
    for i, (box, to_world) in enumerate(objects):
        view = np.linalg.solve(to_world, pose)
        if (roi := _box_roi(box, k, view, width, height)) is not None:
            local.append((i + 1, box, view, roi))
    # Row bands keep temporaries small: full-frame ones cost more in page faults than in arithmetic.
    band = max(1, _BAND_PIXELS // width)
    for r0 in range(0, height, band):
        rows = slice(r0, min(r0 + band, height))
        rays = _world_rays(k, pose[:3, :3], width, rows)
        depth[rows], surf[rows] = _intersect(scene, rays, origin, boxes, rows)
        shade_rays: _Rays = rays
        shade_origin: _Origin = origin
        if local:
            shade_rays, shade_origin = _intersect_objects(
                k, local, width, rows, depth[rows], surf[rows], index[rows], rays, origin
            )
        image[rows] = _shade(scene, shade_rays, shade_origin, depth[rows], surf[rows], float(k[0, 0]))
    return image, depth, surf == _SKY, index


def _intersect_objects(
    k: np.ndarray,
    local: Sequence[tuple[int, np.ndarray, np.ndarray, _Roi]],
    width: int,
    rows: slice,
    depth: np.ndarray,
    surf: np.ndarray,
    index: np.ndarray,
    rays: _Rays,
    origin: Sequence[float],
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Ray cast moving objects into depth, surf and index (in place); return per-pixel shading rays and origin.

    A pixel on an object is shaded in the object's frame, so its texture moves with it; rays keep
    camera-z 1 in every frame (a rotation), so the ray parameter stays the depth.
    """
    shade_rays = [r.copy() for r in rays]
    shade_origin = [np.full(depth.shape, v, np.float32) for v in origin]
    for i, box, view, (box_rows, box_cols) in local:
        r0, r1 = max(box_rows.start, rows.start), min(box_rows.stop, rows.stop)
        if r0 >= r1:
            continue
        obj_rays = _world_rays(k, view[:3, :3], width, rows)
        obj_origin = tuple(float(v) for v in view[:3, 3])
        roi = (slice(r0 - rows.start, r1 - rows.start), box_cols)
        before = depth[roi].copy()
        with np.errstate(divide="ignore", invalid="ignore"):  # axis-parallel rays, as in _intersect
            _intersect_box(box, obj_rays, obj_origin, depth, surf, roi)
        hit = np.zeros(depth.shape, bool)
        hit[roi] = depth[roi] < before
        index[hit] = i
        for axis in range(3):
            shade_rays[axis][hit] = obj_rays[axis][hit]
            shade_origin[axis][hit] = obj_origin[axis]
    return tuple(shade_rays), tuple(shade_origin)


def _world_rays(k: np.ndarray, rot: np.ndarray, width: int, rows: slice) -> tuple[np.ndarray, ...]:
    """World-frame ray directions with camera-z 1, so a hit's ray parameter is its depth."""
    a = ((np.arange(width) - k[0, 2]) / k[0, 0]).astype(np.float32)[None, :]
    b = ((np.arange(rows.start, rows.stop) - k[1, 2]) / k[1, 1]).astype(np.float32)[:, None]
    r = rot.astype(np.float32)
    # Broadcasting row and column terms builds HxW directions without a 3xN matmul.
    return tuple(r[i, 0] * a + r[i, 1] * b + r[i, 2] for i in range(3))


def _intersect(
    scene: _Scene, rays: _Rays, origin: _Origin, boxes: Sequence[tuple[np.ndarray, _Roi]], rows: slice
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit per ray: (depth, surface id), with inf and _SKY where nothing is hit."""
    dx, dy, dz = rays
    ox, oy, oz = origin
    depth = np.full(dx.shape, np.inf, np.float32)
    surf = np.full(dx.shape, _SKY, np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):
        _keep_nearest(depth, surf, _GROUND, -oy / dy)
        top = np.inf if scene.closed else scene.wall_height  # the roof caps the walls when closed
        walls = ((_WALL_POS, scene.wall_pos_x), (_WALL_NEG, scene.wall_neg_x)) if scene.walls else ()
        for sid, wall_x in walls:
            t = (wall_x - ox) / dx
            _keep_nearest(depth, surf, sid, np.where((oy + t * dy) <= top, t, np.inf))
        if scene.closed:
            _keep_nearest(depth, surf, _ROOF, (scene.wall_height - oy) / dy)
            _keep_nearest(depth, surf, _FAR, (scene.far_z - oz) / dz)
        for box, (box_rows, box_cols) in boxes:
            r0, r1 = max(box_rows.start, rows.start), min(box_rows.stop, rows.stop)
            if r0 < r1:
                _intersect_box(box, rays, origin, depth, surf, (slice(r0 - rows.start, r1 - rows.start), box_cols))
    return depth, surf


def _keep_nearest(depth: np.ndarray, surf: np.ndarray, sid: int, t: np.ndarray) -> None:
    hit = (t > 1e-4) & (t < depth)
    depth[hit] = t[hit]
    surf[hit] = sid


def _box_roi(box: np.ndarray, k: np.ndarray, pose: np.ndarray, width: int, height: int) -> _Roi | None:
    """Screen rectangle a box can cover, so its ray test runs only on those pixels."""
    xs, ys, zs = np.meshgrid(box[[0, 3]], box[[1, 4]], box[[2, 5]], indexing="ij")
    corners = np.stack([xs.ravel(), ys.ravel(), zs.ravel()], axis=1)
    cam = (corners - pose[:3, 3]) @ pose[:3, :3]
    if cam[:, 2].max() <= 0:
        return None
    if cam[:, 2].min() <= 1e-3:  # straddles the camera plane: projection is unbounded
        return slice(0, height), slice(0, width)
    u = k[0, 0] * cam[:, 0] / cam[:, 2] + k[0, 2]
    v = k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]
    u0, u1 = max(int(math.floor(u.min())), 0), min(int(math.ceil(u.max())) + 1, width)
    v0, v1 = max(int(math.floor(v.min())), 0), min(int(math.ceil(v.max())) + 1, height)
    if u0 >= u1 or v0 >= v1:
        return None
    return slice(v0, v1), slice(u0, u1)


def _intersect_box(
    box: np.ndarray, rays: _Rays, origin: _Origin, depth: np.ndarray, surf: np.ndarray, roi: _Roi
) -> None:
    """Slab test against an axis-aligned box inside roi, updating depth and surf in place."""
    near = np.full(depth[roi].shape, -np.inf, np.float32)
    far = np.full(depth[roi].shape, np.inf, np.float32)
    face = np.zeros(depth[roi].shape, np.uint8)
    for axis in range(3):
        d = rays[axis][roi]
        t0 = (float(box[axis]) - origin[axis]) / d
        t1 = (float(box[axis + 3]) - origin[axis]) / d
        lo, hi = np.minimum(t0, t1), np.maximum(t0, t1)
        # Entering through a face whose normal opposes the ray: +normal when the ray runs -axis.
        entered = lo > near
        face[entered] = _BOX_FACE + 2 * axis + (d[entered] > 0)
        near = np.maximum(near, lo)
        far = np.minimum(far, hi)
    hit = (near <= far) & (near > 1e-4) & (near < depth[roi])
    depth[roi][hit] = near[hit]
    surf[roi][hit] = face[hit]


# ---------------------------------------------------------------- shading


def _shade(scene: _Scene, rays: _Rays, origin: _Origin, depth: np.ndarray, surf: np.ndarray, fx: float) -> np.ndarray:
    """BGR uint8 colour: textured, sun-lit, fogged surfaces and a gradient sky."""
    finite = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
    hit = [origin[i] + finite * rays[i] for i in range(3)]
    axis = cv2.LUT(surf, _AXIS_TABLE)
    s = np.where(axis == 0, hit[2], hit[0])
    t = np.where(axis == 1, hit[2], hit[1])
    # Texels per pixel, with the normal-aligned ray component for foreshortening, picks the mip level.
    d_norm = np.where(axis == 0, rays[0], np.where(axis == 1, rays[1], rays[2]))
    ray_len = np.sqrt(rays[0] ** 2 + rays[1] ** 2 + rays[2] ** 2)
    cosine = np.clip(np.abs(d_norm) / ray_len, 0.05, 1.0)
    lod = np.log2(np.maximum(finite * ray_len / (fx * np.sqrt(cosine) * _TEXEL_M), 1.0))
    tile = cv2.LUT(surf, _TILE_TABLE)
    texture = _sample_mipmapped(scene.atlas, s * (1.0 / _TEXEL_M), t * (1.0 / _TEXEL_M), tile, lod)
    fog = np.exp(finite * (-1.0 / scene.fog_m))
    gain = cv2.LUT(surf, scene.shade_table) * fog
    haze = 1.0 - fog
    # Colour stays planar: NumPy is slow at broadcasting over a trailing axis of 3.
    planes = [plane * gain + float(c) * haze for plane, c in zip(cv2.split(texture), scene.fog_bgr)]
    sky = surf == _SKY
    if sky.any():
        for plane, sky_plane in zip(planes, _sky_colour(scene, rays)):
            np.copyto(plane, sky_plane, where=sky)
    return np.clip(cv2.merge(planes) + 0.5, 0, 255).astype(np.uint8)


_LEVEL_SIZE = _surface_table(np.array([_TEX_SIZE >> lv for lv in range(_MIP_LEVELS)]))
_LEVEL_X0 = _surface_table(np.concatenate([[0], np.cumsum(_LEVEL_SIZE[:_MIP_LEVELS] + 2)[:-1]]))


def _sample_mipmapped(
    atlas: np.ndarray, s_tex: np.ndarray, t_tex: np.ndarray, tile: np.ndarray, lod: np.ndarray
) -> np.ndarray:
    """Trilinear lookup: bilinear in the two mip levels around lod, blended linearly."""
    # Wrapping once at level 0 also wraps every coarser level since their sizes divide it.
    s_tex = _wrap(s_tex, _TEX_SIZE)
    t_tex = _wrap(t_tex, _TEX_SIZE)
    lod = np.clip(lod, 0.0, _MIP_LEVELS - 1.0)
    fine = np.minimum(lod.astype(np.uint8), _MIP_LEVELS - 2)  # lod >= 0, so the cast floors
    frac = lod - fine
    samples = []
    for level in (fine, fine + 1):
        size = cv2.LUT(level, _LEVEL_SIZE)
        scale = size * (1.0 / _TEX_SIZE)
        map_x = s_tex * scale + (cv2.LUT(level, _LEVEL_X0) + 1.0)
        map_y = t_tex * scale + (tile * (size + 2.0) + 1.0)
        samples.append(cv2.remap(atlas, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    return samples[0] + (samples[1] - samples[0]) * cv2.merge([frac, frac, frac])


def _wrap(x: np.ndarray, period: float) -> np.ndarray:
    # np.mod is ~20x slower than this; a result equal to period lands on the wrapped border texel.
    return x - np.floor(x * (1.0 / period)) * period


def _sky_colour(scene: _Scene, rays: _Rays) -> list[np.ndarray]:
    """Smooth B, G, R gradient planes by elevation angle: deliberately textureless."""
    elevation = rays[1] / np.sqrt(rays[0] ** 2 + rays[1] ** 2 + rays[2] ** 2)
    blend = np.clip(elevation * 2.0, 0.0, 1.0) ** 0.7
    return [float(h) + (float(z) - float(h)) * blend for h, z in zip(scene.fog_bgr, scene.sky_zenith_bgr)]


# ---------------------------------------------------------------- video and ground truth


def _codec_args(codec: str) -> list[str]:
    if codec == "h264":
        return ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-threads", "1"]
    if codec == "mpeg4":
        return ["-c:v", "mpeg4", "-q:v", "3", "-threads", "1"]
    if codec == "vp9":
        return [
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "0",
            "-crf",
            "32",
            "-threads",
            "1",
        ]
    raise ValueError(f"unknown codec {codec!r}; expected h264, mpeg4 or vp9")


def encode_video(frames: Iterable[np.ndarray], path: str | Path, fps: float, codec: str = "h264") -> Path:
    """Pipe BGR uint8 frames through ffmpeg into path, atomically; returns path."""
    path = Path(path)
    codec_args = _codec_args(codec)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("encode_video needs at least one frame")
    height, width = first.shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even width and height, got {width}x{height}")
    with atomic_path(path, keep_suffix=True) as tmp:
        _run_ffmpeg(_frames_with_first(first, frames), tmp, width, height, fps, codec_args)
    return path


def _frames_with_first(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _run_ffmpeg(
    frames: Iterable[np.ndarray], out: Path, width: int, height: int, fps: float, codec_args: list[str]
) -> None:
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        f"{width}x{height}",
        "-r",
        repr(float(fps)),
        "-i",
        "-",
        *codec_args,
        "-pix_fmt",
        "yuv420p",
        "-an",
        # Bit-exact flags and no metadata keep encoder version strings out, so reruns are byte-identical.
        "-map_metadata",
        "-1",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        str(out),
    ]
    # stderr goes to a file: a full pipe could block ffmpeg while we block writing stdin.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _feed(proc, frames, (height, width, 3))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        code = proc.wait()
        if code != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"ffmpeg exited with {code} writing {out}:\n{tail}")


def _feed(proc: subprocess.Popen[bytes], frames: Iterable[np.ndarray], shape: tuple[int, int, int]) -> None:
    stdin = proc.stdin
    assert stdin is not None  # _run_ffmpeg opens it with subprocess.PIPE
    try:
        for frame in frames:
            if frame.shape != shape or frame.dtype != np.uint8:
                raise ValueError(f"frame {frame.shape} {frame.dtype} differs from the first: {shape} uint8")
            stdin.write(np.ascontiguousarray(frame).tobytes())
        stdin.close()
    except BrokenPipeError:
        pass  # ffmpeg died early; its exit status and stderr say why


def render_video(spec: SceneSpec, path: str | Path, codec: str = "h264", cut_to: SceneSpec | None = None) -> Path:
    """Render spec's left view to a video, optionally hard-cutting to cut_to's frames."""
    if cut_to is not None and (cut_to.width, cut_to.height) != (spec.width, spec.height):
        raise ValueError("cut_to must have the same width and height as spec")

    def images() -> Iterator[np.ndarray]:
        for s in (spec, cut_to) if cut_to is not None else (spec,):
            for frame in render_frames(s):
                yield frame.image

    return encode_video(images(), path, spec.fps, codec)


def save_ground_truth(spec: SceneSpec, path: str | Path) -> Path:
    """Write depth (float16), poses, K and sky masks of every frame to an .npz, atomically.

    With spec.objects it also holds `moving` (pixels on any moving object) and `moving_attached` (on one
    attached to the camera), bool [T, H, W].
    """
    path = Path(path)
    depth, right_depth, sky, poses, index = [], [], [], [], []
    for frame in render_frames(spec):  # keep only ground truth; images would dominate memory
        depth.append(_to_float16(frame.depth))
        sky.append(frame.sky_mask)
        poses.append(frame.pose)
        if frame.right_depth is not None:
            right_depth.append(_to_float16(frame.right_depth))
        if frame.object_index is not None:
            index.append(frame.object_index)
    n = len(poses)
    arrays: dict[str, np.ndarray | np.generic] = {
        "depth": np.stack(depth) if n else np.zeros((0, spec.height, spec.width), np.float16),
        "poses": np.stack(poses) if n else np.zeros((0, 4, 4)),
        "K": intrinsics(spec),
        "sky": np.stack(sky) if n else np.zeros((0, spec.height, spec.width), bool),
        "timestamps": np.arange(n) / spec.fps,
        "baseline_m": np.float64(spec.baseline_m),
    }
    if right_depth:
        arrays["right_depth"] = np.stack(right_depth)
    if spec.objects:
        index_stack = np.stack(index) if n else np.zeros((0, spec.height, spec.width), np.uint8)
        attached = [i + 1 for i, obj in enumerate(spec.objects) if obj.attached]
        arrays["moving"] = index_stack > 0
        arrays["moving_attached"] = np.isin(index_stack, attached)
    with atomic_path(path) as tmp, open(tmp, "xb") as fh:  # a file object: savez appends no ".npz"
        # allow_pickle is named so that no entry of arrays can stand for it; all arrays are numeric,
        # so pickling never applied and the bytes written are the same.
        np.savez_compressed(fh, allow_pickle=False, **arrays)
    return path


def _to_float16(depth: np.ndarray) -> np.ndarray:
    # Grazing hits near the horizon can lie beyond float16's 65504 m; saturate them rather than
    # let them become inf, which means sky.
    finite_max = float(np.finfo(np.float16).max)
    return np.where(np.isinf(depth), depth, np.minimum(depth, finite_max)).astype(np.float16)


# ---------------------------------------------------------------- stereo ground truth

_OCCLUSION_DEPTH_TOL = 0.02  # relative: the right view's surface must be this much nearer to hide a point


@dataclass(frozen=True)
class StereoFrame:
    """A rectified stereo pair as a 3D movie would show it, with ground truth for the left view."""

    left: np.ndarray  # HxWx3 uint8 BGR
    right: np.ndarray  # HxWx3 uint8 BGR, convergence and vertical shifts applied
    disparity: np.ndarray  # HxW float32 left-view pixels: x_right = x_left - disparity (= -u of L->R flow)
    occluded: np.ndarray  # HxW bool: left pixels hidden in the right view or falling outside it
    sky_mask: np.ndarray  # HxW bool (left view)
    depth: np.ndarray  # HxW float32 left depth, inf on sky


def render_stereo_frames(
    spec: SceneSpec, *, convergence_px: float = 0.0, vertical_px: float = 0.0, right_delay_frames: int = 0
) -> Iterator[StereoFrame]:
    """Yield stereo pairs of spec (baseline_m >= 0).

    The right view is shifted right by convergence_px and down by vertical_px.

    Disparity is fx * baseline / depth - convergence_px, so with a convergence shift far points get
    negative disparity and near points positive, as in 3D movies; sky gets -convergence_px. The
    vertical shift is a misalignment: it moves the right image but not the (horizontal) disparity.
    right_delay_frames > 0 is a defect: the right view is the one rendered that many frames earlier (the
    first frame's for the first few), as from eyes out of sync; the ground truth stays the in-sync one.
    """
    if spec.baseline_m < 0:
        raise ValueError(f"baseline_m must be >= 0, got {spec.baseline_m}")
    if right_delay_frames < 0:
        raise ValueError(f"right_delay_frames must be >= 0, got {right_delay_frames}")
    fx = float(intrinsics(spec)[0, 0])
    earlier: list[np.ndarray] = []  # right views of the last right_delay_frames frames
    for frame in render_frames(spec):
        if right_delay_frames:
            earlier.append(frame.image if frame.right_image is None else frame.right_image)
            late = earlier.pop(0) if len(earlier) > right_delay_frames else earlier[0]
            frame = dataclasses.replace(frame, right_image=late)
        # baseline 0 renders no right view; it would equal the left one.
        right = frame.image if frame.right_image is None else frame.right_image
        right_depth = frame.depth if frame.right_depth is None else frame.right_depth
        parallax = np.where(np.isfinite(frame.depth), fx * spec.baseline_m / frame.depth, 0.0).astype(np.float32)
        occluded = _stereo_occlusion(frame.depth, right_depth, parallax, convergence_px, vertical_px)
        if convergence_px or vertical_px:
            shift = np.array([[1, 0, convergence_px], [0, 1, vertical_px]], dtype=np.float32)
            right = cv2.warpAffine(
                right, shift, (spec.width, spec.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
        disparity = (parallax - np.float32(convergence_px)).astype(np.float32)
        yield StereoFrame(frame.image, right, disparity, occluded, frame.sky_mask, frame.depth)


def _stereo_occlusion(
    depth: np.ndarray, right_depth: np.ndarray, parallax: np.ndarray, convergence_px: float, vertical_px: float
) -> np.ndarray:
    """Z-buffer test: a left pixel is hidden if the unshifted right view sees something clearly nearer there."""
    h, w = depth.shape
    cols = np.arange(w, dtype=np.float32)[None, :]
    rows = np.arange(h)[:, None]
    src = cols - parallax  # column in the unshifted right render
    lo = np.clip(np.floor(src), 0, w - 1).astype(np.intp)
    hi = np.clip(lo + 1, 0, w - 1)
    # The farther of the two neighbours: a point on a slanted surface lies between them, and a pixel
    # only half covered by an occluder's edge still counts as seen.
    seen = np.maximum(right_depth[rows, lo], right_depth[rows, hi])
    with np.errstate(invalid="ignore"):  # inf * (1 - tol) is inf; sky is hidden by anything finite
        hidden = seen < depth * (1.0 - _OCCLUSION_DEPTH_TOL)
    x_right = src + convergence_px
    y_right = rows + vertical_px
    # Outside the render, or where the shifted right image only holds replicated border pixels.
    outside = (src < 0) | (src > w - 1) | (x_right < 0) | (x_right > w - 1) | (y_right < 0) | (y_right > h - 1)
    return hidden | outside


def encode_stereo_video(
    frames: Iterable[StereoFrame], path: str | Path, fps: float, layout: str = "sbs_full", codec: str = "h264"
) -> Path:
    """Pack each pair into layout (see pipeline.stereo.packing.STEREO_LAYOUTS) and encode with encode_video."""
    if layout not in STEREO_LAYOUTS:  # checked before ffmpeg starts, not at the first frame
        raise ValueError(f"unknown stereo layout {layout!r}; expected one of {', '.join(STEREO_LAYOUTS)}")
    return encode_video((pack_views(f.left, f.right, layout) for f in frames), path, fps, codec)


def render_stereo_video(
    spec: SceneSpec,
    path: str | Path,
    *,
    layout: str = "sbs_full",
    convergence_px: float = 0.0,
    vertical_px: float = 0.0,
    codec: str = "h264",
    right_delay_frames: int = 0,
) -> Path:
    """Render spec as a stereo video in layout; render_stereo_frames gives the matching ground truth."""
    frames = render_stereo_frames(
        spec, convergence_px=convergence_px, vertical_px=vertical_px, right_delay_frames=right_delay_frames
    )
    return encode_stereo_video(frames, path, spec.fps, layout, codec)
