"""PyTorch reference of benches/finetune.rs: one fine-tuning epoch of the same recipe on the same images,
as a plain PyTorch script would train it. Reads what the pipe bench wrote (run it first):
target/bench/finetune_recipe.json (pipe's `--preset finetune` settings and the precision `auto` chose
there), finetune_pixels.u8 and finetune_labels.u8 (the decoded CIFAR-10 training JPEGs, NHWC RGB uint8);
with --photos, finetune_photos_recipe.json (`--preset photos --unfreeze 13 --augment`),
finetune_photos.u8 (the training photos at pipe's augmentation resolution, RGB uint8, sizes in the
recipe) and finetune_photos_labels.u8.

The model: the VGG16 convs from models/vgg16_imagenet.safetensors (the last `unfreeze` trainable, the
others with requires_grad False), max pooling, then, as the recipe's `pooling` says, the flattened map
or its L2-normalised global maximum per channel, then Linear (512 x (size/32)^2, or 512)->256, ReLU, Dropout 0.5,
Linear 256->classes (PyTorch's default initialisation); batch and weights channels_last; caffe
preprocessing (RGB->BGR, minus the ImageNet BGR means); with `augment`, random horizontal flips and
4-pixel pad-and-crop (zero padding, as pipe), or for photos a random resized crop (torchvision's ranges,
bilinear with antialiasing) and a random horizontal flip; SGD with momentum and weight decay,
OneCycleLR(max_lr=lr, cycle_momentum=False) over the epoch's steps when the recipe's schedule is
one-cycle, label smoothing as the recipe says; with precision bf16, torch.autocast("cpu",
dtype=torch.bfloat16) around the forward pass (PyTorch's mixed precision); libtorch's default thread
count (as pipe). A warm-up epoch of `warm_up_images` first, then the timed epoch with a fresh model:
training images/s (no validation), printed and written as JSON."""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import VGG16_BLOCKS, load_safetensors, vgg16_features, write_result  # noqa: E402

BGR_MEANS = np.array([103.939, 116.779, 123.68], dtype=np.float32)



def build(w, unfreeze, size=32, classes=10, pooling="flatten"):
    names = [f"base.block{b}_conv{c}" for b, n in enumerate(VGG16_BLOCKS, 1) for c in range(1, n + 1)]
    convs = []
    for i, k in enumerate(names):
        trainable = i >= len(names) - unfreeze
        wt = torch.from_numpy(w[k + ".weight"].copy()).contiguous(memory_format=torch.channels_last)
        b = torch.from_numpy(w[k + ".bias"].copy())
        convs.append((wt.requires_grad_(trainable), b.requires_grad_(trainable)))
    # the flattened 512-channel map after five 2x2 poolings, or its 512 channel maxima
    features = 512 if pooling == "max" else 512 * (size // 32) ** 2
    head = torch.nn.Sequential(torch.nn.Linear(features, 256), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(256, classes))
    return convs, head


def forward(convs, head, x, pooling="flatten"):
    return head(vgg16_features(x, convs, pooling))


def augment(batch, rng, pad=4):
    """Random horizontal flip and pad-and-crop of NHWC uint8 images (black padding)."""
    n, s = batch.shape[0], batch.shape[1]
    out = np.zeros_like(batch)
    padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    flips = rng.random(n) < 0.5
    shifts = rng.integers(-pad, pad + 1, size=(n, 2))
    for k in range(n):
        img = padded[k, :, ::-1] if flips[k] else padded[k]
        dy, dx = shifts[k]
        out[k] = img[pad + dy:pad + dy + s, pad + dx:pad + dx + s]
    return out


def crop_box(h, w, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop box (as pipe's crop_box): (top, left, height, width)."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(target * r))), int(round(np.sqrt(target / r)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1), ch, cw
    return 0, 0, h, w


def photo_augment(photos, idx, size, rng):
    """Random resized crop (bilinear, antialiased, back to uint8) and random horizontal flip of the
    photos idx: NHWC uint8 images of side size."""
    out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
    for k, i in enumerate(idx):
        p = photos[i]
        t, l, ch, cw = crop_box(p.shape[0], p.shape[1], rng)
        x = torch.from_numpy(np.ascontiguousarray(p[t:t + ch, l:l + cw])).permute(2, 0, 1)[None].float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)
        img = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        out[k] = img[:, ::-1] if rng.random() < 0.5 else img
    return out


def epoch(r, w, pixels, labels, n, rng, photos=None):
    """Trains a fresh model for one epoch on the first n images (with photos, photo augmentation
    crops from them); returns the training seconds."""
    torch.manual_seed(r["seed"])
    pooling = r.get("pooling", "flatten")
    convs, head = build(w, r["unfreeze"], r["size"], r.get("classes", 10), pooling)
    params = [p for wb in convs for p in wb if p.requires_grad] + list(head.parameters())
    opt = torch.optim.SGD(params, lr=r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"])
    bs = r["batch_size"]
    steps = (n + bs - 1) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=max(steps, 2),
                                                cycle_momentum=False) if r["schedule"] == "onecycle" else None
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=r["label_smoothing"])
    bf16 = r["precision"] == "bf16"
    head.train()
    t = time.perf_counter()
    for idx in np.array_split(rng.permutation(n), steps):
        if photos is not None:
            batch = photo_augment(photos, idx, r["size"], rng)
        else:
            batch = pixels[idx]
            if r["augment"]:
                batch = augment(batch, rng)
        x = torch.from_numpy(batch[..., ::-1].astype(np.float32) - BGR_MEANS)
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels[idx].astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(convs, head, x, pooling)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched:
            sched.step()
    return time.perf_counter() - t


def load_inputs(d, photos):
    """The recipe, labels and images the pipe bench wrote to d: (recipe, pixels, labels, photos), with
    pixels None for the photo form and photos None for the CIFAR-10 one."""
    prefix = "finetune_photos" if photos else "finetune"
    with open(os.path.join(d, f"{prefix}_recipe.json")) as f:
        r = json.load(f)
    if photos:
        labels = np.fromfile(os.path.join(d, "finetune_photos_labels.u8"), dtype=np.uint8)
        data = np.fromfile(os.path.join(d, "finetune_photos.u8"), dtype=np.uint8)
        sets, at = [], 0
        for h, w in r["photo_shapes_hw"]:
            sets.append(data[at:at + h * w * 3].reshape(h, w, 3))
            at += h * w * 3
        return r, None, labels, sets
    s = r["size"]
    pixels = np.fromfile(os.path.join(d, "finetune_pixels.u8"), dtype=np.uint8).reshape(-1, s, s, 3)
    labels = np.fromfile(os.path.join(d, "finetune_labels.u8"), dtype=np.uint8)
    return r, pixels, labels, None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="models/vgg16_imagenet.safetensors")
    p.add_argument("--dir", default="target/bench")
    p.add_argument("--photos", action="store_true",
                   help="the photo form: `cargo bench --bench finetune -- --photos` wrote its inputs")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    prefix = "finetune_photos" if a.photos else "finetune"
    out = a.out or os.path.join(a.dir, f"reference_{prefix}.json")
    recipe = os.path.join(a.dir, f"{prefix}_recipe.json")
    for f in (a.weights, recipe):
        if not os.path.exists(f):
            sys.exit(f"{f} not found; run `make setup` and `cargo bench --bench finetune"
                     f"{' -- --photos' if a.photos else ''}` first")
    r, pixels, labels, photos = load_inputs(a.dir, a.photos)
    w = load_safetensors(a.weights)
    rng = np.random.default_rng(r["seed"])
    epoch(r, w, pixels, labels, r["warm_up_images"], rng, photos)
    seconds = epoch(r, w, pixels, labels, r["images"], rng, photos)
    rate = r["images"] / seconds
    res = {"task": prefix, "images_per_s": rate, "images": r["images"], "precision": r["precision"],
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    write_result(out, res)
    print(f"PyTorch {prefix} epoch ({r['precision']}): {rate:.1f} images/s ({res['threads']} threads)")


if __name__ == "__main__":
    main()
