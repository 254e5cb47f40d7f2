"""The built-in demo dataset: procedurally drawn pedestrians in Market-1501 layout.

Identity lives in the person (clothing colours and where they go, clothing pattern, body
proportions, hair, bag and hat); the camera and the shot decide everything else (background,
illumination, colour cast, blur, scale, crop, occlusion). Clothing colours come from a small
shared palette, so many identities share the same colours in different places or patterns:
a colour histogram alone cannot tell them apart, and camera colour casts move histograms further.
Deterministic: the images are a pure function of the arguments.
"""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from siamese_reid.errors import ReIDError
from siamese_reid.files import create_folder, write_json

SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")

PALETTE = np.array(
    [
        [200, 30, 30],
        [30, 60, 170],
        [40, 140, 50],
        [230, 200, 40],
        [25, 25, 25],
        [235, 235, 235],
        [120, 120, 120],
        [140, 80, 40],
        [150, 60, 160],
        [240, 130, 30],
    ],
    dtype=np.float32,
)
SKIN_TONES = np.array([[240, 200, 170], [200, 150, 110], [150, 100, 70], [95, 60, 40]], np.float32)
PATTERNS = ("solid", "horizontal_stripes", "vertical_stripes", "checks", "two_tone")


@dataclasses.dataclass(frozen=True)
class Identity:
    """What stays the same about one person across cameras."""

    shirt: np.ndarray
    shirt_second: np.ndarray
    trousers: np.ndarray
    shoes: np.ndarray
    hair: np.ndarray
    skin: np.ndarray
    pattern: str
    stripe_period: int
    torso_fraction: float
    width_fraction: float
    long_trousers: bool
    bag_color: np.ndarray | None
    bag_side: int
    hat_color: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes."""

    background_top: np.ndarray
    background_bottom: np.ndarray
    gain: float
    cast: np.ndarray
    blur: int
    noise: float


def _color(rng, exclude=()):
    choices = [i for i in range(len(PALETTE)) if i not in exclude]
    index = int(rng.choice(choices))
    return index, PALETTE[index]


def make_identity(rng):
    shirt_index, shirt = _color(rng)
    _, shirt_second = _color(rng, exclude=(shirt_index,))
    _, trousers = _color(rng)
    return Identity(
        shirt=shirt,
        shirt_second=shirt_second,
        trousers=trousers,
        shoes=PALETTE[int(rng.choice([4, 5, 7, 6]))],
        hair=PALETTE[int(rng.choice([4, 7, 3, 6]))],
        skin=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
        stripe_period=int(rng.integers(3, 7)),
        torso_fraction=float(rng.uniform(0.30, 0.42)),
        width_fraction=float(rng.uniform(0.32, 0.50)),
        long_trousers=bool(rng.random() < 0.75),
        bag_color=_color(rng)[1] if rng.random() < 0.45 else None,
        bag_side=int(rng.choice([-1, 1])),
        hat_color=_color(rng)[1] if rng.random() < 0.25 else None,
    )


def make_camera(rng):
    return Camera(
        background_top=rng.uniform(40, 220, size=3).astype(np.float32),
        background_bottom=rng.uniform(40, 200, size=3).astype(np.float32),
        gain=float(rng.uniform(0.6, 1.3)),
        cast=rng.uniform(0.75, 1.25, size=3).astype(np.float32),
        blur=int(rng.integers(0, 3)),
        noise=float(rng.uniform(2, 10)),
    )


def _box_blur(image, radius):
    if radius <= 0:
        return image
    kernel = 2 * radius + 1
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    summed = np.cumsum(np.cumsum(padded, axis=0), axis=1)
    summed = np.pad(summed, ((1, 0), (1, 0), (0, 0)))
    height, width = image.shape[:2]
    total = (
        summed[kernel : kernel + height, kernel : kernel + width]
        - summed[:height, kernel : kernel + width]
        - summed[kernel : kernel + height, :width]
        + summed[:height, :width]
    )
    return total / (kernel * kernel)


def _background(camera, rng, height, width):
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    canvas = camera.background_top * (1 - rows) + camera.background_bottom * rows
    canvas = np.broadcast_to(canvas, (height, width, 3)).copy()
    # A few shot-dependent clutter rectangles (doors, signs, other objects).
    for _ in range(int(rng.integers(1, 4))):
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        canvas[top : top + int(rng.integers(5, height // 2)), left : left + int(rng.integers(3, width // 2))] = (
            rng.uniform(30, 230, size=3)
        )
    return canvas


def _torso_texture(identity, rows, cols):
    if identity.pattern == "horizontal_stripes":
        second = (rows // identity.stripe_period) % 2 == 1
    elif identity.pattern == "vertical_stripes":
        second = (cols // identity.stripe_period) % 2 == 1
    elif identity.pattern == "checks":
        second = ((rows // identity.stripe_period) + (cols // identity.stripe_period)) % 2 == 1
    elif identity.pattern == "two_tone":
        second = rows > rows.min() + (rows.max() - rows.min()) / 2
    else:
        second = np.zeros_like(rows, dtype=bool)
    return np.where(second[..., None], identity.shirt_second, identity.shirt)


def draw_person(identity, camera, rng, height, width):
    """Draws one shot of `identity` seen by `camera`; returns uint8 [height, width, 3]."""
    canvas = _background(camera, rng, height, width)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = rng.uniform(0.78, 0.97)
    person_height = scale * height
    top = rng.uniform(0.01, 1.0 - scale) * height
    center = width / 2 + rng.uniform(-0.08, 0.08) * width
    half_width = identity.width_fraction * width / 2 * scale / 0.9

    def region(y0, y1, x0, x1):
        return (
            (rows >= top + y0 * person_height)
            & (rows < top + y1 * person_height)
            & (cols >= center + x0 * half_width)
            & (cols < center + x1 * half_width)
        )

    head_center = top + 0.08 * person_height
    head = ((rows - head_center) / (0.075 * person_height)) ** 2 + ((cols - center) / (0.42 * half_width)) ** 2 <= 1
    canvas[head] = identity.skin
    hair = head & (rows < head_center - 0.02 * person_height)
    canvas[hair] = identity.hair
    if identity.hat_color is not None:
        canvas[region(-0.005, 0.045, -0.55, 0.55)] = identity.hat_color
    torso_end = 0.16 + identity.torso_fraction
    torso = region(0.16, torso_end, -1.0, 1.0)
    arms = region(0.17, torso_end - 0.02, -1.3, -1.0) | region(0.17, torso_end - 0.02, 1.0, 1.3)
    canvas[torso] = _torso_texture(identity, rows - top, cols)[torso]
    canvas[arms] = identity.shirt
    legs_end = 0.94
    gap = np.abs(cols - center) < 0.12 * half_width
    trouser_end = legs_end if identity.long_trousers else torso_end + 0.22
    canvas[region(torso_end, trouser_end, -0.85, 0.85) & ~gap] = identity.trousers
    if not identity.long_trousers:
        canvas[region(trouser_end, legs_end, -0.7, 0.7) & ~gap] = identity.skin
    canvas[region(legs_end, 1.0, -0.95, 0.95) & ~gap] = identity.shoes
    if identity.bag_color is not None:
        side = identity.bag_side * (1 if rng.random() < 0.8 else -1)  # seen from behind, sometimes
        x0, x1 = (1.0, 1.7) if side > 0 else (-1.7, -1.0)
        canvas[region(torso_end - 0.12, torso_end + 0.08, x0, x1)] = identity.bag_color
    if rng.random() < 0.3:  # partial occlusion by something in front of the person
        occluder_top = int(rng.uniform(0.5, 0.85) * height)
        occluder_width = int(rng.uniform(0.3, 0.7) * width)
        left = int(rng.integers(0, width - occluder_width + 1))
        canvas[occluder_top:, left : left + occluder_width] = rng.uniform(30, 230, size=3)
    shot_gain = camera.gain * rng.uniform(0.85, 1.15)
    canvas = canvas * shot_gain * camera.cast
    canvas = _box_blur(canvas, camera.blur + int(rng.random() < 0.3))
    canvas = canvas + rng.normal(0.0, camera.noise, size=canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _crop_jitter(image, rng):
    """Detector-style box jitter: crop a little off each side and resize back."""
    height, width = image.shape[:2]
    top, bottom = int(rng.integers(0, height // 12 + 1)), int(rng.integers(0, height // 12 + 1))
    left, right = int(rng.integers(0, width // 10 + 1)), int(rng.integers(0, width // 10 + 1))
    cropped = Image.fromarray(image[top : height - bottom, left : width - right])
    return cropped.resize((width, height), Image.BILINEAR)


def _file_name(pid, camid, frame, box):
    prefix = "-1" if pid < 0 else f"{pid:04d}"
    return f"{prefix}_c{camid}s1_{frame:06d}_{box:02d}.jpg"


def generate_demo_dataset(output_dir, spec):
    """Writes the demo dataset in Market-1501 layout; returns {split: [file names written]}.

    `spec` is the `DemoConfig` section (its `dir` is not used: `output_dir` is).

    Training identities are 1..N, test identities N+1..; each identity is seen by 2 or more
    cameras. Queries are one image per test identity and camera; the rest of its images go to
    the gallery with distractors (pid 0) and junk boxes (pid -1).
    """
    output_dir = Path(output_dir)
    rng = np.random.default_rng(spec.seed)
    cameras = [make_camera(rng) for _ in range(spec.num_cameras)]
    folders = {name: output_dir / name for name in SPLIT_FOLDERS}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    written = {name: [] for name in folders}
    frame = 0

    def save(split, pid, camid, image):
        nonlocal frame
        frame += 1
        image = _crop_jitter(image, rng)
        name = _file_name(pid, camid, frame, 1)
        image.save(folders[split] / name, quality=92)
        written[split].append(name)

    def shots(identity, camera_ids):
        for camid in camera_ids:
            yield (
                camid,
                [
                    draw_person(identity, cameras[camid - 1], rng, spec.image_height, spec.image_width)
                    for _ in range(spec.images_per_camera)
                ],
            )

    num_identities = spec.num_train_identities + spec.num_test_identities
    for pid in range(1, num_identities + 1):
        identity = make_identity(rng)
        num_seen = int(rng.integers(2, spec.num_cameras + 1))
        camera_ids = sorted(int(c) + 1 for c in rng.choice(spec.num_cameras, num_seen, replace=False))
        for camid, images in shots(identity, camera_ids):
            if pid <= spec.num_train_identities:
                for image in images:
                    save("bounding_box_train", pid, camid, image)
            else:
                save("query", pid, camid, images[0])
                for image in images[1:] or images[:1]:
                    save("bounding_box_test", pid, camid, image)
    for pid, count in ((0, spec.num_distractors), (-1, spec.num_junk)):
        for _ in range(count):
            camid = int(rng.integers(1, spec.num_cameras + 1))
            image = draw_person(make_identity(rng), cameras[camid - 1], rng, spec.image_height, spec.image_width)
            if pid < 0:  # junk: a badly cropped box showing mostly background
                image = np.roll(image, spec.image_height // 2, axis=0)
            save("bounding_box_test", pid, camid, image)
    return written


_DEMO_NAME = re.compile(r"^(-1|\d{4})_c\ds1_\d{6}_01\.jpg$")
_MARKER = "demo_spec.json"


def _spec_json(spec):
    values = {key: value for key, value in dataclasses.asdict(spec).items() if key != "dir"}
    return json.dumps(values, sort_keys=True)


def _remove_previous_demo(output_dir, written):
    """Removes the images an earlier demo generation wrote (the folder carries our marker):
    the files its marker lists, or, for a marker that lists none (an interrupted run), files
    with the demo's own names in its own split folders. Anything else stays."""
    if written is not None:
        paths = [output_dir / name for name in written]
    else:
        paths = [
            path
            for split in SPLIT_FOLDERS
            if (output_dir / split).is_dir()
            for path in (output_dir / split).iterdir()
            if _DEMO_NAME.match(path.name)
        ]
    for path in paths:
        if path.is_file():
            path.unlink()
    for split in SPLIT_FOLDERS:
        folder = output_dir / split
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def ensure_demo_dataset(spec):
    """Generates the demo dataset into `spec.dir` unless it already holds one made from `spec`.

    Never deletes what the project did not create: a folder that exists, is not empty and has
    no demo marker is refused. A demo folder made from other settings (or left half-written)
    has its own images replaced, and nothing else in it is touched.

    Args:
      spec: the `DemoConfig` section.

    Returns:
      True when images were generated, False when the folder was already up to date.
    """
    output_dir = Path(spec.dir).expanduser()
    marker = output_dir / _MARKER
    wanted_spec = json.loads(_spec_json(spec))
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("spec") == wanted_spec and previous.get("complete"):
            return False
        _remove_previous_demo(output_dir, previous.get("files"))
    elif output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ReIDError(
            f"demo.dir '{spec.dir}' already exists and is not a demo dataset folder; "
            "choose a new or empty folder for demo.dir (nothing was changed)"
        )
    create_folder(output_dir, exist_ok=True)
    # The marker goes first, marked incomplete: an interrupted generation is still recognised
    # as ours next time and regenerated, instead of being refused as a foreign folder.
    write_json(marker, {"spec": wanted_spec, "complete": False})
    written = generate_demo_dataset(output_dir, spec)
    files = [f"{split}/{name}" for split, names in written.items() for name in names]
    write_json(marker, {"spec": wanted_spec, "complete": True, "files": files})
    return True


def is_demo_run(data, demo):
    """True when a run's saved data section says it trained on the built-in demo (synthetic
    people).

    train.py saves the config it trained with, the demo resolved: `data.root` is `demo.dir`.
    A demo folder used through `data.root` elsewhere carries the marker `ensure_demo_dataset`
    writes. A saved config that names no dataset at all was not written by training (a model
    imported from elsewhere): that is not the demo.

    Args:
      data: the `DataConfig` section of a run's config.yaml.
      demo: its `DemoConfig` section.
    """
    if data.root is None:
        return False
    root = Path(data.root).expanduser()
    return root == Path(demo.dir).expanduser() or (root / _MARKER).is_file()
