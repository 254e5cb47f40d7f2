"""Writes the torchreid OSNet reference fixtures of tests/test_osnet.py (run once, by hand).

Needs PyTorch and torchreid 0.2.5, in a virtual environment of their own (this package's
environment and CI never need PyTorch):

    python3 -m venv /work/torch-venv
    /work/torch-venv/bin/pip install torch==2.13.0 numpy pillow==<this package's Pillow version>
    /work/torch-venv/bin/pip install --no-deps torchreid==0.2.5
    /work/torch-venv/bin/python tools/make_torchreid_fixture.py

Only torchreid's two model files are executed (loaded by path: importing the torchreid package
would pull in its whole training stack). The script writes, under tests/fixtures/torchreid_osnet/:

- structure.json: for each of the six OSNet variants, torchreid's parameter count (feature layer
  included, classifier excluded) and the name and shape of every state-dict tensor.
- <variant>.npz for osnet_x0_25 (with torchreid's fc layer), an IBN build and osnet_ain_x0_25 (both
  at width x0.25, without fc): the state dict, random uint8 images and torchreid's features of
  them, and the features of a few Market-1501 crops named by file (their pixels are never stored).

Before the features are computed every normalisation gets non-trivial parameters (random affine
weights, running statistics from training-mode passes over random images), so a Keras port that
mixed up gamma and beta, mean and variance, or BatchNorm and InstanceNorm would fail the test.
Every floating tensor is rounded to float16 precision *before* torchreid runs, so that the npz can
store it as float16 (half the size) and still hold exactly the weights that produced the features.
"""

import argparse
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = PROJECT_ROOT / "tests" / "fixtures" / "torchreid_osnet"
MARKET_QUERY = PROJECT_ROOT.parent / "shared" / "data" / "market1501-sample" / "query"
TORCHREID_VERSION = "0.2.5"
NUM_CLASSES = 10  # the classifier is not part of a tower; its size does not matter
WIDTH_X0_25 = [16, 64, 96, 128]
RANDOM_IMAGE_SIZE = (100, 52)  # odd feature-map sizes after the stem: PyTorch's rounding is tested
NUM_RANDOM_IMAGES = 3
NUM_REAL_IMAGES = 4
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchreid_models_folder():
    """torchreid's models folder, found without importing the package (0.2.5 from PyPI keeps it
    under torchreid/reid/models, the GitHub source under torchreid/models)."""
    spec = importlib.util.find_spec("torchreid")
    if spec is None:
        raise SystemExit("torchreid is not installed in this Python: pip install --no-deps torchreid==0.2.5")
    package = Path(spec.submodule_search_locations[0])
    version = re.search(r"__version__ = '([^']+)'", (package / "__init__.py").read_text()).group(1)
    if version != TORCHREID_VERSION:
        raise SystemExit(f"torchreid {version} is installed; the fixtures are defined by {TORCHREID_VERSION}")
    for folder in (package / "reid" / "models", package / "models"):
        if (folder / "osnet.py").is_file():
            return folder
    raise SystemExit(f"no osnet.py under {package}")


def load_module(folder, name):
    spec = importlib.util.spec_from_file_location(f"torchreid_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def published_variants(osnet, osnet_ain):
    """The six variants of issue 19, as torchreid builds them (fc 512 included)."""
    return {
        name: getattr(module, name)(num_classes=NUM_CLASSES, pretrained=False)
        for module, names in (
            (osnet, ("osnet_x1_0", "osnet_x0_75", "osnet_x0_5", "osnet_x0_25", "osnet_ibn_x1_0")),
            (osnet_ain, ("osnet_ain_x1_0",)),
        )
        for name in names
    }


def fixture_variants(osnet, osnet_ain):
    """The small builds whose features the test compares."""
    blocks = [osnet.OSBlock] * 3
    return {
        "osnet_x0_25": osnet.osnet_x0_25(num_classes=NUM_CLASSES, pretrained=False),
        # osnet_ibn_x1_0's architecture at width x0.25, without the fc layer
        "osnet_ibn_x0_25": osnet.OSNet(
            NUM_CLASSES, blocks=blocks, layers=[2, 2, 2], channels=WIDTH_X0_25, IN=True, feature_dim=None
        ),
        "osnet_ain_x0_25": osnet_ain.osnet_ain_x0_25(num_classes=NUM_CLASSES, pretrained=False, feature_dim=None),
    }


def structure(model):
    parameters = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("classifier."))
    shapes = {name: list(t.shape) for name, t in model.state_dict().items() if not name.startswith("classifier.")}
    return {"parameters": parameters, "state_dict": shapes}


def give_normalisations_nontrivial_values(model, generator):
    """Random affine weights for every BatchNorm / InstanceNorm and random gate and fc biases,
    then running statistics from a few training-mode passes over random images."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d | torch.nn.InstanceNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
            elif isinstance(module, torch.nn.Conv2d | torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.1, generator=generator)
        model.train()
        for _ in range(5):
            model(torch.randn(8, 3, 128, 64, generator=generator))
    model.eval()


def round_to_float16(model):
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def torchreid_input(images):
    """uint8 [batch, height, width, 3] RGB -> torchreid's normalised [batch, 3, height, width]."""
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (tensor - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def features(model, images):
    with torch.no_grad():
        return model(torchreid_input(images)).numpy()


def real_images():
    """A few Market-1501 query crops (128x64, fed at their own size), or none when absent."""
    if not MARKET_QUERY.is_dir():
        print(f"{MARKET_QUERY} is absent: the fixtures hold no real-image features")
        return [], np.zeros((0, 128, 64, 3), np.uint8)
    paths = sorted(MARKET_QUERY.glob("*.jpg"))[:NUM_REAL_IMAGES]
    return [path.name for path in paths], np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])


def write_fixture(name, model, random_images, real_names, real_pixels, generator):
    give_normalisations_nontrivial_values(model, generator)
    round_to_float16(model)
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("classifier."):
            continue
        array = tensor.numpy()
        state[f"state/{key}"] = array.astype(np.float16) if tensor.is_floating_point() else array
    path = OUTPUT / f"{name}.npz"
    np.savez_compressed(
        path,
        **state,
        random_images=random_images,
        random_features=features(model, random_images),
        real_image_names=np.array(real_names, dtype=str),
        real_features=features(model, real_pixels) if len(real_pixels) else np.zeros((0, 0), np.float32),
        torchreid_version=np.array(TORCHREID_VERSION),
    )
    print(f"{path.relative_to(PROJECT_ROOT)}: {path.stat().st_size / 1e3:.0f} kB")


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    folder = torchreid_models_folder()
    osnet, osnet_ain = load_module(folder, "osnet"), load_module(folder, "osnet_ain")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    published = {name: structure(model) for name, model in published_variants(osnet, osnet_ain).items()}
    (OUTPUT / "structure.json").write_text(
        json.dumps({"torchreid_version": TORCHREID_VERSION, **published}, separators=(",", ":")) + "\n"
    )
    for name, record in published.items():
        print(f"{name}: {record['parameters']:,} parameters")
    generator = torch.Generator().manual_seed(0)
    random_images = np.random.default_rng(0).integers(0, 256, (NUM_RANDOM_IMAGES, *RANDOM_IMAGE_SIZE, 3), np.uint8)
    real_names, real_pixels = real_images()
    for name, model in fixture_variants(osnet, osnet_ain).items():
        write_fixture(name, model, random_images, real_names, real_pixels, generator)


if __name__ == "__main__":
    main()
