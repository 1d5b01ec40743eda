"""Helpers shared by the reference scripts: reading safetensors with numpy, timing loops, the VGG16
convolutional base as plain torch calls, writing results."""
import json
import os
import struct
import time

import numpy as np


def load_safetensors(path):
    """Tensors of a safetensors file as a dict of float32 numpy arrays (the format is an 8-byte
    little-endian header length, a JSON header, then the raw little-endian data)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        assert spec["dtype"] == "F32", f"{name}: dtype {spec['dtype']}"
        a, b = spec["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(spec["shape"])
    return out


def median_rate(fn, items, warmup_s=2.0, measure_s=8.0, min_samples=10):
    """Calls fn() for warmup_s, then measures samples (each of k calls, k chosen so that a sample
    takes about measure_s / min_samples) until measure_s has passed and at least min_samples were
    taken. Returns (items per second at the median sample, samples), like criterion's median."""
    t_end = time.perf_counter() + warmup_s
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if time.perf_counter() >= t_end:
            break
    per_call = (time.perf_counter() - t0) / calls
    k = max(1, int(measure_s / min_samples / per_call))
    samples = []
    t_end = time.perf_counter() + measure_s
    while len(samples) < min_samples or time.perf_counter() < t_end:
        t = time.perf_counter()
        for _ in range(k):
            fn()
        samples.append((time.perf_counter() - t) / k)
    samples.sort()
    med = samples[len(samples) // 2] if len(samples) % 2 else 0.5 * (
        samples[len(samples) // 2 - 1] + samples[len(samples) // 2])
    return items / med, len(samples)


def write_result(path, res):
    """Writes the result dict res as indented JSON to path, creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


VGG16_BLOCKS = [2, 2, 3, 3, 3]  # VGG16: 3x3 convolutions per block, each block ending in 2x2 max pooling


def vgg16_features(x, convs, pooling="flatten"):
    """The VGG16 convolutional base on NCHW float32 x with convs a list of 13 (weight, bias) torch
    tensors: conv 3x3 pad 1 + ReLU, 2x2 max pooling after each block; returns the flattened maps, or
    with pooling "max" each channel's maximum over the map, L2-normalised (torch's F.normalize) and
    scaled by the square root of the channel count."""
    import torch.nn.functional as F
    i = 0
    for n in VGG16_BLOCKS:
        for _ in range(n):
            x = F.relu(F.conv2d(x, convs[i][0], convs[i][1], padding=1))
            i += 1
        x = F.max_pool2d(x, 2, 2)
    if pooling == "max":
        m = x.float().amax((2, 3))
        return F.normalize(m, dim=1) * m.shape[1] ** 0.5
    return x.flatten(1)
