"""int8 against float32, and pipe's int8 against onnxruntime's own quantizer, on three trained models:
the CIFAR-10 seed run (32x32, batch 256), the photos preset on the ants-and-bees photos (384x384,
batch 8) and the full CIFAR-10 training set with the base frozen (`full`).

For each model:
1. `pipe train` (the seed recipe; `--preset photos` on data/hymenoptera), into target/bench/int8/runs,
   unless that run is already there (--fresh trains again).
2. `pipe export` of the float32 model, and `pipe export --quantize int8 --save-calibration`, whose own
   verification refuses the export when int8 loses more than allowed on the run's test split (0.5
   points on CIFAR-10; one photo on the photos).
3. The reference: onnxruntime's `quantize_static` (QDQ, per-channel int8 weights, uint8 activations,
   its default MinMax calibration) of the same float32 file, calibrated on the very same pixels
   (pipe's --save-calibration file), with pipe's metadata copied in so that `pipe infer` reads it,
   and its `reduce_range` set as pipe's `--reduce-range auto` chose (7-bit weights on a CPU without
   int8 dot products), so that both quantize the weights to the same number of bits.
4. Accuracy: `pipe infer --backend ort` with each of the three files on the evaluation folder (the
   10,000 CIFAR-10 test JPEGs; the 153 ants-and-bees val/ photos), the truth from the folder names.
   The export with the other weight width (8 bits where `auto` chose 7, 7 where it chose 8) is
   measured for accuracy too, its verification bound lifted: what the other choice costs here.
5. Speed: the three files in onnxruntime's Python API (all cores), on the first batch of calibration
   pixels, rounds alternating (ABCABC), images/s at the median sample, each ratio the mean of its
   per-round ratios; tract's rate from `pipe infer --backend tract` on files spread over the
   evaluation folder: the float32 file alternating twice with `pipe infer --backend ort` on the same
   files (tract/ort the mean of the two rounds' ratios), then the int8 file. The full-data run
   measures accuracy only (the seed run's network at the seed run's size).

Fails (exit 1) when ort int8 is under 3.0x ort float32 on a CPU with int8 dot-product instructions
(AVX512_VNNI or AVX-VNNI; without them the ratio is reported, with no goal), pipe's int8 under 0.95x the speed of
onnxruntime's, less accurate than onnxruntime's, or more than the allowed loss below float32, or
when tract runs the float32 photo model (384 pixels) under 0.6x ort's speed in `pipe infer` (at 32
pixels the ratio is reported; the criterion bench holds that goal). Writes
target/bench/int8.json and prints a table. About 15 minutes on a 2-core machine with the runs trained,
about 6 more to train them."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))
from common import median_rate, write_result  # noqa: E402

RATE_LINE = re.compile(r"^(\w+): (\d+) images? in ([\d.]+) s \(", re.M)

CASES = {
    "seed": dict(train=[], data="data/cifar10", evaluate="data/cifar10/test", size=32, batch=256,
                 tract_images=1000),
    "photos": dict(train=["--data", "data/hymenoptera", "--preset", "photos"], data="data/hymenoptera",
                   evaluate="data/hymenoptera/val", size=384, batch=8, tract_images=16),
    # The full training set, frozen base (the head's settings of docs/RESULTS.md's full-data run).
    # Accuracy only: the same network at the same size as the seed run, so the same speed.
    "full": dict(train=["--train-limit", "0", "--test-limit", "0", "--epochs", "15", "--lr", "1e-3"],
                 data="data/cifar10", evaluate="data/cifar10/test", size=32, batch=256, tract_images=1000,
                 speed=False),
}


def run(cmd, ok=(0,)):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode not in ok:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def evaluation_files(folder):
    """(path, class name) of every file in folder/<class>/, sorted."""
    out = []
    for c in sorted(os.listdir(folder)):
        d = os.path.join(folder, c)
        if os.path.isdir(d):
            out += [(os.path.join(d, f), c) for f in sorted(os.listdir(d))]
    return out


def accuracy(pipe, model, folder):
    """(right, classified) of `pipe infer --backend ort` with model on folder (skipped files, exit 3,
    do not count)."""
    r = run([pipe, "infer", "--backend", "ort", "--format", "json", "--model", model, folder], ok=(0, 3))
    preds = json.loads(r.stdout)["predictions"]
    right = sum(1 for p in preds if os.path.basename(os.path.dirname(p["path"])) == p["label"])
    return right, len(preds)


def infer_rate(pipe, backend, model, files):
    """Images/s that `pipe infer --backend BACKEND` prints for model on files (model load excluded)."""
    r = run([pipe, "infer", "--backend", backend, "--model", model] + files, ok=(0, 3))
    m = RATE_LINE.search(r.stderr)
    if not m:
        sys.exit(f"no rate line from pipe infer --backend {backend}:\n{r.stderr[-2000:]}")
    return int(m.group(2)) / float(m.group(3))


def int8_dot_products():
    """The int8 dot-product instructions of this CPU (/proc/cpuinfo's flags), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return None
    for flag, name in (("avx512_vnni", "AVX512_VNNI"), ("avx_vnni", "AVX-VNNI")):
        if flag in flags:
            return name
    return None


def weight_bits(model):
    """The `weight_bits` metadata of a pipe int8 export (8 or 7)."""
    import onnx
    props = {p.key: p.value for p in onnx.load(model, load_external_data=False).metadata_props}
    return int(props["weight_bits"])


def ort_quantize(float_model, int8_model, pixels, reduce_range):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": pixels[i:i + 8]} for i in range(0, len(pixels), 8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(float_model, int8_model, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    src, dst = onnx.load(float_model), onnx.load(int8_model)
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
    onnx.save(dst, int8_model)


def case(name, spec, a, out):
    pipe = a.pipe
    runs = os.path.join(out, "runs")
    run_dir = os.path.join(runs, name)
    if a.fresh or not os.path.exists(os.path.join(run_dir, "predictions.json")):
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"== training the {name} run", flush=True)
        run([pipe, "train", "--name", name, "--runs-dir", runs, "--cache-dir", os.path.join(out, "cache")]
            + spec["train"], ok=(0, 3))
    with open(os.path.join(run_dir, "predictions.json")) as f:
        tests = len(json.load(f)["items"])
    # CIFAR-10: 0.5 points; the photos: one photo of the test split, as points.
    max_drop = 0.5 if spec["size"] == 32 else 100.0 / tests + 1e-6
    float_model, pipe_int8, ort_int8 = (os.path.join(out, f"{name}-{k}.onnx") for k in
                                        ("float32", "int8", "ort-int8"))
    cal = os.path.join(out, f"{name}-calibration.u8")
    print(f"== {name}: exports", flush=True)
    # The float file's own check (tract against tch) on a few images: tract takes about a second a
    # photo at 384 pixels, and the float file is not what this bench measures.
    run([pipe, "export", float_model, "--run", name, "--runs-dir", runs, "--verify-images", "16"])
    r = run([pipe, "export", pipe_int8, "--run", name, "--runs-dir", runs, "--quantize", "int8",
             "--save-calibration", cal, "--max-accuracy-drop", str(max_drop)])
    print(r.stdout.strip(), flush=True)
    s = spec["size"]
    pixels = np.fromfile(cal, dtype=np.uint8).reshape(-1, s, s, 3).astype(np.float32)
    bits = weight_bits(pipe_int8)
    ort_quantize(float_model, ort_int8, pixels, reduce_range=bits == 7)
    res = {"size": s, "batch": spec["batch"], "calibration_images": len(pixels), "max_drop_points": max_drop,
           "weight_bits": bits, "int8_dot_products": int8_dot_products(), "models": {}}
    models = [("float32", float_model), ("pipe_int8", pipe_int8), ("ort_int8", ort_int8)]
    # The other weight width on this CPU, its verification bound lifted: on a CPU without int8 dot
    # products, what 7 bits save against 8; with them, what 7 bits would cost.
    other = 8 if bits == 7 else 7
    other_file = os.path.join(out, f"{name}-int8-{other}bit.onnx")
    run([pipe, "export", other_file, "--run", name, "--runs-dir", runs, "--quantize", "int8",
         "--reduce-range", "off" if other == 8 else "on", "--max-accuracy-drop", "100"])
    models.append((f"pipe_int8_{other}bit", other_file))
    files = evaluation_files(spec["evaluate"])
    for k, m in models:
        right, n = accuracy(pipe, m, spec["evaluate"])
        res["models"][k] = {"file": m, "bytes": os.path.getsize(m), "right": right, "classified": n,
                            "accuracy": right / n, "ort_images_per_s": []}
        print(f"{name} {k}: accuracy {right}/{n} = {right / n:.4f}", flush=True)
    if not spec.get("speed", True):
        return res
    import onnxruntime as ort
    batch = pixels[:spec["batch"]]
    sessions = {k: ort.InferenceSession(v["file"], providers=["CPUExecutionProvider"])
                for k, v in res["models"].items() if not k.endswith("bit")}
    for _ in range(2):
        for k, sess in sessions.items():
            rate, _ = median_rate(lambda: sess.run(None, {"images": batch}), len(batch),
                                  warmup_s=2.0, measure_s=a.measure_s, min_samples=5)
            res["models"][k]["ort_images_per_s"].append(rate)
            print(f"{name} {k}: ort {rate:.1f} images/s", flush=True)
    del sessions
    subset = [f for f, _ in files[::max(1, len(files) // spec["tract_images"])][:spec["tract_images"]]]
    rounds = res["float32_infer_images_per_s"] = {"tract": [], "ort": []}
    for _ in range(2):
        for backend in ("tract", "ort"):
            rounds[backend].append(infer_rate(pipe, backend, float_model, subset))
            print(f"{name} float32: pipe infer --backend {backend} {rounds[backend][-1]:.2f} images/s",
                  flush=True)
    res["tract_vs_ort_float32"] = sum(t / o for t, o in zip(rounds["tract"], rounds["ort"])) / 2
    res["tract_images_per_s"] = {"float32": sum(rounds["tract"]) / 2,
                                 "pipe_int8": infer_rate(pipe, "tract", pipe_int8, subset)}
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipe", default="target/release/pipe")
    p.add_argument("--out", default="target/bench/int8")
    p.add_argument("--cases", default="seed,photos,full")
    p.add_argument("--fresh", action="store_true", help="train the runs again")
    p.add_argument("--measure-s", type=float, default=10.0)
    a = p.parse_args()
    if not os.path.exists(a.pipe):
        sys.exit(f"{a.pipe} not found; run `make build`")
    os.makedirs(a.out, exist_ok=True)
    results, failures = {}, []
    for name in a.cases.split(","):
        spec = CASES[name]
        if not os.path.isdir(spec["data"]):
            sys.exit(f"{spec['data']} not found; see ../shared/data/README.md (make setup links it)")
        r = results[name] = case(name, spec, a, a.out)
        m = r["models"]
        f, q, o = m["float32"], m["pipe_int8"], m["ort_int8"]
        r["drop_points"] = 100 * (f["accuracy"] - q["accuracy"])
        if spec.get("speed", True):
            # Ratios within each round (the three files measured back to back), then their mean.
            def ratio(a_, b_):
                pairs = list(zip(m[a_]["ort_images_per_s"], m[b_]["ort_images_per_s"]))
                return sum(x / y for x, y in pairs) / len(pairs)
            r["ort_int8_vs_float32"] = ratio("pipe_int8", "float32")
            r["pipe_vs_ort_quantizer_speed"] = ratio("pipe_int8", "ort_int8")
            t = r["tract_images_per_s"]
            r["tract_int8_vs_float32"] = t["pipe_int8"] / t["float32"]
            if r["ort_int8_vs_float32"] < 3.0 and r["int8_dot_products"]:
                failures.append(f"{name}: ort int8 {r['ort_int8_vs_float32']:.2f}x float32 (goal >= 3.0x)")
            if spec["size"] != 32 and r["tract_vs_ort_float32"] < 0.6:
                failures.append(f"{name}: tract {r['tract_vs_ort_float32']:.2f}x ort on the float32 model at "
                                f"{spec['size']} pixels (goal >= 0.6x)")
            if r["pipe_vs_ort_quantizer_speed"] < 0.95:
                failures.append(f"{name}: pipe int8 {r['pipe_vs_ort_quantizer_speed']:.2f}x the speed of "
                                "onnxruntime's quantize_static model (goal >= 0.95x)")
        if q["right"] < o["right"]:
            failures.append(f"{name}: pipe int8 right on {q['right']}, onnxruntime's quantizer on {o['right']}")
        if spec["size"] == 32 and r["drop_points"] > 0.5:
            failures.append(f"{name}: int8 {r['drop_points']:.2f} points below float32 (at most 0.5)")
        if spec["size"] != 32 and f["right"] - q["right"] > 1:
            failures.append(f"{name}: int8 wrong on {f['right'] - q['right']} more photos (at most 1)")
    write_result(os.path.join(os.path.dirname(a.out.rstrip("/")), "int8.json"), results)
    print("\n| model | float32 | pipe int8 | onnxruntime quantize_static |")
    print("|---|---|---|---|")
    for name, r in results.items():
        m = r["models"]
        print(f"| {name} ({r['size']} px) accuracy | {m['float32']['right']}/{m['float32']['classified']} | "
              f"{m['pipe_int8']['right']}/{m['pipe_int8']['classified']} | "
              f"{m['ort_int8']['right']}/{m['ort_int8']['classified']} |")
        print(f"| {name} file MB | " + " | ".join(f"{m[k]['bytes'] / 1e6:.1f}" for k in
                                                 ("float32", "pipe_int8", "ort_int8")) + " |")
        if "tract_images_per_s" not in r:
            continue
        print(f"| {name} ort images/s (batch {r['batch']}; rounds) | "
              + " | ".join(" and ".join(f"{v:.1f}" for v in m[k]["ort_images_per_s"])
                           for k in ("float32", "pipe_int8", "ort_int8")) + " |")
        print(f"| {name} tract images/s | {r['tract_images_per_s']['float32']:.1f} | "
              f"{r['tract_images_per_s']['pipe_int8']:.1f} | |")
    isa = int8_dot_products()
    print(f"\nint8 dot-product instructions: {isa or 'none (the 3.0x goal applies only with them)'}")
    for name, r in results.items():
        line = f"{name}: int8 ({r['weight_bits']}-bit weights) {r['drop_points']:+.2f} points below float32"
        other = 8 if r["weight_bits"] == 7 else 7
        if f"pipe_int8_{other}bit" in r["models"]:
            e = r["models"][f"pipe_int8_{other}bit"]
            line += (f" ({other}-bit weights: {e['right']}/{e['classified']}, "
                     f"{100 * (r['models']['float32']['accuracy'] - e['accuracy']):+.2f} points)")
        if "ort_int8_vs_float32" in r:
            goal = "goal >= 3.0x" if r["int8_dot_products"] else "no goal without int8 dot products"
            line += (f"; ort int8/float32 {r['ort_int8_vs_float32']:.2f}x ({goal}); pipe/onnxruntime "
                     f"quantizer speed {r['pipe_vs_ort_quantizer_speed']:.2f}x (goal >= 0.95x); tract "
                     f"int8/float32 {r['tract_int8_vs_float32']:.2f}x; tract/ort float32 "
                     f"{r['tract_vs_ort_float32']:.2f}x"
                     + (" (goal >= 0.6x)" if r["size"] != 32 else " (the criterion bench's goal)"))
        print(line)
    if failures:
        print("\n".join(["FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
