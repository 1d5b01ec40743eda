"""onnxruntime (Python) reference of benches/infer.rs: the same exported model (target/bench/model.onnx)
on the same pre-decoded batch (target/bench/batch256.u8, NHWC RGB uint8, converted to float32 once),
at batch 1 (the first image) and 256, with the settings of pipe's ort backend
(src/infer/ort_backend.rs): graph optimisation level ORT_ENABLE_ALL, intra-op threads = all cores
(os.cpu_count(), as pipe's --threads 0), default inter-op settings. Both files are written by the
infer bench (`cargo bench --bench infer`). Prints and writes JSON: images/s at the median sample."""
import argparse
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_rate, write_result  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="target/bench/model.onnx")
    p.add_argument("--batch-file", default="target/bench/batch256.u8")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default="target/bench/reference_ort.json")
    a = p.parse_args()
    for f in (a.model, a.batch_file):
        if not os.path.exists(f):
            sys.exit(f"{f} not found; run `cargo bench --bench infer` first (it writes both)")
    images = np.fromfile(a.batch_file, dtype=np.uint8).reshape(-1, 32, 32, 3).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    one = np.ascontiguousarray(images[:1])
    b1, n1 = median_rate(lambda: sess.run(None, {"images": one}), 1, 2.0, 5.0, 20)
    b256, n256 = median_rate(lambda: sess.run(None, {"images": images}), len(images), 2.0, 10.0, 10)
    res = {"task": "ort", "batch1_images_per_s": b1, "batch256_images_per_s": b256,
           "samples": [n1, n256], "threads": a.threads, "onnxruntime": ort.__version__}
    write_result(a.out, res)
    print(f"onnxruntime-python: batch 1 {b1:.1f} images/s, batch {len(images)} {b256:.1f} images/s ({a.threads} threads)")


if __name__ == "__main__":
    main()
