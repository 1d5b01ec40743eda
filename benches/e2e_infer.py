"""End-to-end inference from JPEG files: `pipe infer --backend ort --batch-size 256` on the CIFAR-10 test
JPEGs (data/cifar10/test, 10,000 files) with the infer bench's model (target/bench/model.onnx, written
by `cargo bench --bench infer`), records discarded. pipe infer opens the backend as the infer bench
does (ort, all cores: --threads 0) and reads, decodes and classifies the files in a pipeline (the
next batch is decoded while the current one runs). The rate is the one pipe infer prints on stderr,
"ort: N images in T s (R images/s; backend busy B%; model load L s; float32 model)": N / T, the classification
alone, without loading the model; summary.py compares it with the ort rate on pre-decoded batches
(infer bench ort_batch256 and benches/reference/ort_infer.py, measured minutes apart) and with the
backend's own rate on the same decoded batches in the same run, N / (T * B / 100), the time spent
inside the backend's run calls. Writes JSON to --out."""
import argparse
import json
import os
import re
import subprocess
import sys

RATE_LINE = re.compile(r"^(\w+): (\d+) images? in ([\d.]+) s \([\d.]+ images/s; backend busy ([\d.]+)%; "
                       r"model load ([\d.]+) s(?:; [^\n]*)?\)$", re.M)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pipe", default="target/release/pipe")
    p.add_argument("--model", default="target/bench/model.onnx")
    p.add_argument("--images", default="data/cifar10/test")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", default="target/bench/e2e_infer.json")
    a = p.parse_args()
    for f in (a.pipe, a.images):
        if not os.path.exists(f):
            sys.exit(f"{f} not found; run `make setup`")
    if not os.path.exists(a.model):
        sys.exit(f"{a.model} not found; run `cargo bench --bench infer` first (it writes the model)")
    cmd = [a.pipe, "infer", "--backend", "ort", "--batch-size", str(a.batch), "--model", a.model, a.images]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    m = RATE_LINE.search(r.stderr)
    if not m:
        sys.exit(f"no rate line in the stderr of {' '.join(cmd)}:\n{r.stderr[-2000:]}")
    backend, images, seconds = m.group(1), int(m.group(2)), float(m.group(3))
    busy, load_s = float(m.group(4)) / 100, float(m.group(5))
    res = {"task": "infer_jpeg", "backend": backend, "batch": a.batch, "images": images, "seconds": seconds,
           "images_per_s": images / seconds, "backend_busy": busy,
           "backend_images_per_s": images / (seconds * busy) if busy > 0 else None,
           "model_load_s": load_s, "threads": "all cores (--threads 0)"}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"pipe infer from JPEG ({backend}, batch {a.batch}): {images} images in {seconds:.2f} s, "
          f"{images / seconds:.1f} images/s, backend busy {busy:.1%} (model load {load_s:.2f} s)")


if __name__ == "__main__":
    main()
