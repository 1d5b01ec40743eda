"""End-to-end wall times of the release binary, each the median of --runs runs, in temporary folders
(the user's feature cache and runs are untouched):
- `pipe train` with the seed defaults from a cold feature cache (a new empty --cache-dir per run);
- a 5 x 15 sweep (`pipe sweep --batch-sizes 32,64,96,128,256 --epochs 15`) from a warm cache (the one
  the train runs filled).
Writes JSON (seconds) to --out."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd):
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return dt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pipe", default="target/release/pipe")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default="target/bench/e2e.json")
    a = p.parse_args()
    for f in ("models/vgg16_imagenet.safetensors", "data/cifar10/train", a.pipe):
        if not os.path.exists(f):
            sys.exit(f"{f} not found; run `make setup`")
    with tempfile.TemporaryDirectory(prefix="pipe-bench-") as tmp:
        runs = os.path.join(tmp, "runs")
        train = []
        for i in range(a.runs):
            cache = os.path.join(tmp, f"cache{i}")
            train.append(timed([a.pipe, "train", "--cache-dir", cache, "--runs-dir", runs,
                                "--name", f"bench{i}"]))
            print(f"pipe train (cold cache) run {i + 1}/{a.runs}: {train[-1]:.1f} s", flush=True)
        sweep = []
        for i in range(a.runs):
            sweep.append(timed([a.pipe, "sweep", "--batch-sizes", "32,64,96,128,256", "--epochs", "15",
                                "--cache-dir", os.path.join(tmp, "cache0"),
                                "--out", os.path.join(tmp, f"sweep{i}")]))
            print(f"pipe sweep 5x15 (warm cache) run {i + 1}/{a.runs}: {sweep[-1]:.1f} s", flush=True)
    res = {"train_cold_s": statistics.median(train), "train_cold_runs_s": train,
           "sweep_warm_s": statistics.median(sweep), "sweep_warm_runs_s": sweep}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
