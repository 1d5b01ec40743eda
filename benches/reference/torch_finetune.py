"""PyTorch reference of benches/finetune.rs: one fine-tuning epoch of the same recipe on the same images,
as a plain PyTorch script would train it. Reads what the pipe bench wrote (run it first):
target/bench/finetune_recipe.json (pipe's `--preset finetune` settings and the precision `auto` chose
there), finetune_pixels.u8 and finetune_labels.u8 (the decoded CIFAR-10 training JPEGs, NHWC RGB uint8).

The model: the VGG16 convs from models/vgg16_imagenet.safetensors (the last `unfreeze` trainable, the
others with requires_grad False), max pooling, then Linear 512->256, ReLU, Dropout 0.5, Linear 256->10
(PyTorch's default initialisation); batch and weights channels_last; caffe preprocessing (RGB->BGR, minus
the ImageNet BGR means); with `augment`, random horizontal flips and 4-pixel pad-and-crop (zero padding,
as pipe); SGD with momentum and weight decay, OneCycleLR(max_lr=lr, cycle_momentum=False) over the
epoch's steps, label smoothing as the recipe says; with precision bf16,
torch.autocast("cpu", dtype=torch.bfloat16) around the forward pass (PyTorch's mixed precision); libtorch's
default thread count (as pipe). A warm-up epoch of `warm_up_images` first, then the timed epoch with a
fresh model: training images/s (no validation), printed and written as JSON."""
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



def build(w, unfreeze):
    names = [f"base.block{b}_conv{c}" for b, n in enumerate(VGG16_BLOCKS, 1) for c in range(1, n + 1)]
    convs = []
    for i, k in enumerate(names):
        trainable = i >= len(names) - unfreeze
        wt = torch.from_numpy(w[k + ".weight"].copy()).contiguous(memory_format=torch.channels_last)
        b = torch.from_numpy(w[k + ".bias"].copy())
        convs.append((wt.requires_grad_(trainable), b.requires_grad_(trainable)))
    head = torch.nn.Sequential(torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(256, 10))
    return convs, head


def forward(convs, head, x):
    return head(vgg16_features(x, convs))


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


def epoch(r, w, pixels, labels, n, rng):
    """Trains a fresh model for one epoch on the first n images; returns the training seconds."""
    torch.manual_seed(r["seed"])
    convs, head = build(w, r["unfreeze"])
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
        batch = pixels[idx]
        if r["augment"]:
            batch = augment(batch, rng)
        x = torch.from_numpy(batch[..., ::-1].astype(np.float32) - BGR_MEANS)
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels[idx].astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(convs, head, x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched:
            sched.step()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="models/vgg16_imagenet.safetensors")
    p.add_argument("--dir", default="target/bench")
    p.add_argument("--out", default="target/bench/reference_finetune.json")
    a = p.parse_args()
    recipe = os.path.join(a.dir, "finetune_recipe.json")
    for f in (a.weights, recipe):
        if not os.path.exists(f):
            sys.exit(f"{f} not found; run `make setup` and `cargo bench --bench finetune` first")
    with open(recipe) as f:
        r = json.load(f)
    s = r["size"]
    pixels = np.fromfile(os.path.join(a.dir, "finetune_pixels.u8"), dtype=np.uint8).reshape(-1, s, s, 3)
    labels = np.fromfile(os.path.join(a.dir, "finetune_labels.u8"), dtype=np.uint8)
    w = load_safetensors(a.weights)
    rng = np.random.default_rng(r["seed"])
    epoch(r, w, pixels, labels, r["warm_up_images"], rng)
    seconds = epoch(r, w, pixels, labels, r["images"], rng)
    rate = r["images"] / seconds
    res = {"task": "finetune", "images_per_s": rate, "images": r["images"], "precision": r["precision"],
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    write_result(a.out, res)
    print(f"PyTorch fine-tuning epoch ({r['precision']}): {rate:.1f} images/s ({res['threads']} threads)")


if __name__ == "__main__":
    main()
