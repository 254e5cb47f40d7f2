"""Writes the torchreid checkpoint fixtures of tests/fixtures/torchreid/ with PyTorch itself.

Run once, in an environment with torch, numpy and torchreid (not this package's: the package
and its tests never need PyTorch):

    /work/torch-venv/bin/python tools/make_torchreid_checkpoints.py

Every file is written by `torch.save`, the function torchreid's `save_checkpoint` calls, in
both of its layouts (zip, torch >= 1.6; legacy, `_use_new_zipfile_serialization=False`). Beside
them, `*_expected.npz` holds the values PyTorch itself gives (`tensor.numpy()`), which the tests
compare the reader's arrays against.

- tiny_state_dict_{zip,legacy}.pth: a bare state dict of a small network with a 1000-way
  classifier (as torchreid's ImageNet backbones), a float16 and a bfloat16 tensor, and tensors
  that are strided views at an offset of a storage they share.
- tiny_checkpoint_{zip,legacy}.pth.tar-3: torchreid's checkpoint dict (Engine.save_model):
  state dict of an nn.DataParallel model ("module." names), epoch, rank-1 as a numpy float32,
  Adam's state after a step, MultiStepLR's state.
- osnet_x0_25_checkpoint.pth.tar-1: torchreid's osnet_x0_25 (8 training identities) as a
  checkpoint dict, with randomised batch-norm statistics; osnet_x0_25_expected.npz holds three
  test images and the 512-d features torchreid's model gives them in eval mode.
"""

import importlib.util
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torchreid"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torchreid_osnet_module():
    """torchreid's models/osnet.py, loaded alone: the package's __init__ imports its dataset
    modules (scipy, gdown, ...), which a model does not need."""
    root = Path(importlib.util.find_spec("torchreid").origin).parent
    candidates = [root / "models" / "osnet.py", root / "reid" / "models" / "osnet.py"]
    path = next(path for path in candidates if path.is_file())
    spec = importlib.util.spec_from_file_location("torchreid_osnet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 4)
        self.classifier = nn.Linear(4, num_classes)

    def forward(self, x):
        pooled = torch.relu(self.bn1(self.conv1(x))).mean(dim=(2, 3))
        return self.classifier(self.fc(pooled))


def tiny_state_dict():
    torch.manual_seed(0)
    state = OrderedDict(TinyNet(num_classes=1000).state_dict())
    state["bn1.running_var"].uniform_(0.5, 1.5)
    state["extra.half"] = torch.randn(3, 5).half()
    state["extra.bfloat16"] = torch.randn(2, 3).bfloat16()
    # Views of one storage: torch.save writes the storage once and each view's offset and
    # stride (a slice at offset 9 with strides (8, 3), and a transpose).
    shared = torch.arange(40, dtype=torch.float32).reshape(5, 8)
    state["extra.shared"] = shared
    state["extra.strided"] = shared[1:, 1::3]
    state["extra.transposed"] = shared.t()
    state["extra.scalar"] = torch.tensor(2.5)
    state["extra.empty"] = torch.zeros(0, 3)
    return state


def as_numpy(tensor):
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).contiguous().numpy()


def save_both_layouts(obj, stem, suffix):
    torch.save(obj, OUTPUT / f"{stem}_zip{suffix}")
    torch.save(obj, OUTPUT / f"{stem}_legacy{suffix}", _use_new_zipfile_serialization=False)


def engine_checkpoint(model, epoch, rank1, train_step):
    """What torchreid's Engine.save_model passes to save_checkpoint, for a DataParallel model."""
    parallel = nn.DataParallel(model)
    optimizer = torch.optim.Adam(parallel.parameters(), lr=3e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[20, 40], gamma=0.1)
    if train_step is not None:
        train_step(parallel)
        optimizer.step()
    return {
        "state_dict": parallel.state_dict(),
        "epoch": epoch,
        "rank1": np.float32(rank1),  # torchreid's rank-1 is cmc[0] of a numpy float32 array
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }


def write_tiny():
    state = tiny_state_dict()
    save_both_layouts(state, "tiny_state_dict", ".pth")
    np.savez(OUTPUT / "tiny_state_dict_expected.npz", **{name: as_numpy(value) for name, value in state.items()})

    torch.manual_seed(1)
    model = TinyNet(num_classes=6)
    images = torch.randn(2, 3, 6, 6)
    checkpoint = engine_checkpoint(model, 3, 0.625, lambda parallel: parallel(images).sum().backward())
    save_both_layouts(checkpoint, "tiny_checkpoint", ".pth.tar-3")
    np.savez(
        OUTPUT / "tiny_checkpoint_expected.npz",
        **{name: as_numpy(value) for name, value in model.state_dict().items()},
    )


def randomise_batch_norm(model, generator):
    """Batch-norm statistics and affine parameters away from their initial 0 / 1, so that a
    converter that swaps or ignores one of them gives other features."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.1)


def test_images(count=3, height=256, width=128):
    """Blocky colour images (8x4 random colours, each 32x32 pixels), seeded."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(count, 8, 4, 3), dtype=np.uint8)
    return coarse.repeat(height // 8, axis=1).repeat(width // 4, axis=2)


@torch.no_grad()
def torchreid_features(model, images):
    """torchreid's test path: ToTensor (x / 255), Normalize(ImageNet mean, std), model in eval
    mode, which returns the 512-d feature after its fc layer."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model.eval()
    return model(x).numpy()


def write_osnet():
    torch.manual_seed(2)
    model = torchreid_osnet_module().osnet_x0_25(num_classes=8, pretrained=False, loss="softmax")
    with torch.no_grad():
        randomise_batch_norm(model, torch.Generator().manual_seed(3))
    images = test_images()
    checkpoint = engine_checkpoint(model, 1, 0.5, train_step=None)
    torch.save(checkpoint, OUTPUT / "osnet_x0_25_checkpoint.pth.tar-1")
    np.savez_compressed(OUTPUT / "osnet_x0_25_expected.npz", images=images, features=torchreid_features(model, images))


if __name__ == "__main__":
    OUTPUT.mkdir(parents=True, exist_ok=True)
    write_tiny()
    write_osnet()
    for path in sorted(OUTPUT.iterdir()):
        print(f"{os.path.getsize(path):>9,d}  {path.name}")
