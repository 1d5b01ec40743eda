"""PyTorch reference of benches/extract.rs: the frozen VGG16 base on a batch of pseudo-random images
(default 128 at 32x32, the bench's tch_batch128; --size 224 --batch 32 for tch_224_batch32), with the
same weights (models/vgg16_imagenet.safetensors), libtorch's default thread count (the same
libtorch, from the same .venv, as pipe's tch), inference mode, and the same Keras "caffe"
preprocessing from NHWC RGB uint8 pixels (RGB->BGR, minus the ImageNet BGR means, NCHW float32).
The plain script keeps the usual contiguous NCHW layout; --channels-last runs it as pipe does.
Prints and writes JSON: images/s at the median sample."""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import VGG16_BLOCKS, load_safetensors, median_rate, vgg16_features, write_result  # noqa: E402

BGR_MEANS = np.array([103.939, 116.779, 123.68], dtype=np.float32)
# VGG16 blocks: convolutions per block before each 2x2 max pooling.



def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="models/vgg16_imagenet.safetensors")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="image side in pixels (multiple of 32)")
    p.add_argument("--channels-last", action="store_true",
                   help="lay the batch and weights out channels-last (what pipe does; not the plain script)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if not os.path.exists(a.weights):
        sys.exit(f"{a.weights} not found; run `make setup`")
    w = load_safetensors(a.weights)
    convs = []
    for b, n in enumerate(VGG16_BLOCKS, 1):
        for c in range(1, n + 1):
            k = f"base.block{b}_conv{c}"
            convs.append((torch.from_numpy(w[k + ".weight"].copy()), torch.from_numpy(w[k + ".bias"].copy())))
    if a.channels_last:
        convs = [(wt.contiguous(memory_format=torch.channels_last), b) for wt, b in convs]
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    if a.size < 32 or a.size % 32:
        sys.exit(f"--size must be a multiple of 32, got {a.size}")
    size_tag = "" if a.size == 32 else str(a.size)
    out = a.out or f"target/bench/reference_torch{'_cl' if a.channels_last else ''}{size_tag}.json"
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(a.batch, a.size, a.size, 3), dtype=np.uint8)

    def extract():
        with torch.inference_mode():
            x = torch.from_numpy(pixels[..., ::-1].astype(np.float32) - BGR_MEANS)
            x = x.permute(0, 3, 1, 2).contiguous(memory_format=fmt)
            return vgg16_features(x, convs).contiguous()

    rate, samples = median_rate(extract, a.batch, warmup_s=3.0, measure_s=12.0, min_samples=10)
    res = {"task": "extract", "channels_last": a.channels_last, "images_per_s": rate, "batch": a.batch,
           "size": a.size, "samples": samples, "threads": torch.get_num_threads(), "torch": torch.__version__}
    write_result(out, res)
    layout = "channels-last" if a.channels_last else "NCHW"
    print(f"PyTorch extraction ({layout}, {a.size}x{a.size}): {rate:.1f} images/s (batch {a.batch}, "
          f"{res['threads']} threads)")


if __name__ == "__main__":
    main()
