"""Reads the criterion results (target/criterion/<group>/<bench>/new/{estimates,benchmark}.json), the
reference results (target/bench/reference_*.json) and the end-to-end figures (target/bench/e2e.json,
target/bench/e2e_infer_<round>.json) of one `make bench` run, prints one table (task, pipe, reference,
ratio, target, pass/fail) and writes it as JSON to target/bench/summary.json. Rates are at criterion's median sample."""
import json
import os
import re
import platform
import sys
import time

CRIT = "target/criterion"
OUT = "target/bench"
GFLOP_PER_IMAGE = 0.627  # VGG16 base at 32x32
N_IMAGES = 6000  # seed recipe: 5,000 training + 1,000 test images through the base
BATCH_224 = 32  # batch of the 224x224 extraction bench (benches/extract.rs, tch_224_batch32)


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def crit(bench):
    """(items per second, seconds per iteration) at the median sample of a criterion bench, or None."""
    est = load(os.path.join(CRIT, bench, "new", "estimates.json"))
    meta = load(os.path.join(CRIT, bench, "new", "benchmark.json"))
    if est is None:
        return None
    s = est["median"]["point_estimate"] * 1e-9
    items = ((meta or {}).get("throughput") or {}).get("Elements")
    return (items / s if items else None, s)


def rate(bench):
    r = crit(bench)
    return r[0] if r else None


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def round_files(prefix):
    """Names of the per-round files target/bench/<prefix><i>.json of the ABAB rounds, in round order."""
    pattern = re.compile(re.escape(prefix) + r"\d+\.json")
    return sorted(f for f in os.listdir(OUT) if pattern.fullmatch(f)) if os.path.isdir(OUT) else []


def round_rates(prefix, items):
    """Items per second at criterion's median sample in each round's copied estimates.json."""
    return [items / (load(os.path.join(OUT, f))["median"]["point_estimate"] * 1e-9) for f in round_files(prefix)]


def infer_rate(bench, items):
    """Mean images/s of infer bench `bench` over the ABAB rounds (target/bench/infer_<bench>_<i>.json,
    copied after each round by make bench), else the latest criterion result."""
    rates = round_rates(f"infer_{bench}_", items)
    return mean(rates) if rates else rate(f"infer/{bench}")


def round_results(prefix, single):
    """The results target/bench/<prefix><i>.json of the ABAB rounds, in round order; without rounds
    (a script run by hand), [target/bench/<single>] when it exists."""
    results = [load(os.path.join(OUT, f)) for f in round_files(prefix)]
    return results or [r for r in [load(os.path.join(OUT, single))] if r]


def extraction_results():
    """pipe's and PyTorch's extraction rates: pipe and PyTorch alternate in rounds (make bench: ABAB);
    each side's rate is the mean over the rounds, so a change of load on the shared cores weighs on
    both. At 32x32, batch 128, and at 224x224, batch 32 (criterion's tch_224_batch32 and
    torch_extract.py --size 224 --batch 32); PyTorch channels-last once, for information."""
    rounds = round_files("extract_tch_")
    tch_rates = round_rates("extract_tch_", 128)
    ref_rates = [r["images_per_s"] for r in (load(os.path.join(OUT, f.replace("extract_tch_", "reference_torch_")))
                                              for f in rounds) if r]
    torch_ref = load(os.path.join(OUT, "reference_torch.json")) or {}
    if ref_rates:
        torch_ref = dict(load(os.path.join(OUT, rounds[0].replace("extract_tch_", "reference_torch_"))),
                         images_per_s=mean(ref_rates), rounds=ref_rates)
    tch224_rates = round_rates("extract_tch224_", BATCH_224)
    ref224_rates = [r["images_per_s"] for r in round_results("reference_torch224_", "reference_torch224.json")]
    return {"extract": mean(tch_rates) if tch_rates else rate("extract/tch_batch128"),
            "tch_rates": tch_rates, "ref_rates": ref_rates, "torch_ref": torch_ref,
            "torch_cl": load(os.path.join(OUT, "reference_torch_cl.json")) or {},
            "tch224": mean(tch224_rates) if tch224_rates else rate("extract/tch_224_batch32"),
            "tch224_rates": tch224_rates, "ref224_rates": ref224_rates}


def inference_results():
    """pipe's ort and tract rates on pre-decoded batches, the onnxruntime-python reference's and pipe
    infer's from the test JPEGs (benches/e2e_infer.py), each the mean over the rounds."""
    ort_rounds = [load(os.path.join(OUT, f)) for f in round_files("reference_ort_")]
    ort_ref = load(os.path.join(OUT, "reference_ort.json")) or {}
    if ort_rounds:
        ort_ref = dict(ort_rounds[0], rounds=ort_rounds,
                       **{k: mean([r[k] for r in ort_rounds])
                          for k in ("batch1_images_per_s", "batch256_images_per_s")})
    jpeg_rounds = round_results("e2e_infer_", "e2e_infer.json")
    jpeg_rates = [r["images_per_s"] for r in jpeg_rounds]
    busy_rates = [r["backend_images_per_s"] for r in jpeg_rounds if r.get("backend_images_per_s")]
    return {"ort_rounds": ort_rounds, "ort_ref": ort_ref,
            "ort1": infer_rate("ort_batch1", 1), "ort256": infer_rate("ort_batch256", 256),
            "tract1": infer_rate("tract_batch1", 1), "tract256": infer_rate("tract_batch256", 256),
            "jpeg": mean(jpeg_rates), "jpeg_rates": jpeg_rates,
            "jpeg_backend": mean(busy_rates) if len(busy_rates) == len(jpeg_rates) else None}


class Table:
    """The rows of the summary table, as dicts (task, unit, pipe, reference, ratio, target, pass)."""

    def __init__(self):
        self.rows = []

    def row(self, task, unit, pipe, ref, ratio, target, ok):
        self.rows.append({"task": task, "unit": unit, "pipe": pipe, "reference": ref, "ratio": ratio,
                          "target": target, "pass": ok})

    def ratio_row(self, task, unit, pipe, ref, ref_name, minimum):
        """A row whose target is pipe / ref >= minimum."""
        r = pipe / ref if pipe and ref else None
        self.row(task, unit, pipe, ref, r, f">= {minimum}x {ref_name}", None if r is None else r >= minimum)


def speed_rows(t, x, i, ft):
    """The rows of the extraction (x), fine-tuning (ft: (pipe, PyTorch) results of the CIFAR-10 and
    photo forms) and inference (i) rates."""
    extract = x["extract"]
    t.ratio_row("tch extraction, batch 128", "images/s", extract, x["torch_ref"].get("images_per_s"),
                "PyTorch", 0.95)
    r = x["torch_cl"].get("images_per_s")
    t.row("tch extraction vs PyTorch channels-last", "images/s", extract, r,
          extract / r if extract and r else None, "(information)", None)
    t.ratio_row(f"tch extraction 224x224, batch {BATCH_224}", "images/s", x["tch224"],
                mean(x["ref224_rates"]), "PyTorch", 1.0)
    photo_size = ft["photos"][0][0].get("size", "?") if ft["photos"][0] else "?"
    for (pipe, ref), what in [(ft["cifar"], "fine-tuning epoch, 2560 images"),
                              (ft["photos"], f"photo fine-tuning epoch, 245 photos at {photo_size}")]:
        precision = pipe[0]["precision"] if pipe else "?"
        t.ratio_row(f"{what}, {precision}", "images/s", mean([r["images_per_s"] for r in pipe]),
                    mean([r["images_per_s"] for r in ref]), "PyTorch", 1.0)
    ort_ref, ort1, ort256 = i["ort_ref"], i["ort1"], i["ort256"]
    t.ratio_row("ort, batch 256", "images/s", ort256,
                ort_ref.get("batch256_images_per_s"), "onnxruntime-python", 0.95)
    t.ratio_row("ort, batch 1", "images/s", ort1,
                ort_ref.get("batch1_images_per_s"), "onnxruntime-python", 0.95)
    t.ratio_row("pipe infer from JPEG, ort batch 256", "images/s", i["jpeg"], ort256, "pipe ort pre-decoded",
                0.95)
    t.ratio_row("pipe infer from JPEG vs its own backend, same run", "images/s", i["jpeg"],
                i["jpeg_backend"], "ort busy time", 0.95)
    t.ratio_row("pipe infer from JPEG vs onnxruntime-python, batch 256", "images/s", i["jpeg"],
                ort_ref.get("batch256_images_per_s"), "onnxruntime-python", 0.95)
    t.ratio_row("tract, batch 256", "images/s", i["tract256"], ort256, "pipe ort", 0.6)
    tract1 = i["tract1"]
    t.row("tract, batch 1", "images/s", tract1, ort1,
          tract1 / ort1 if tract1 and ort1 else None, "(no target)", None)


def other_rows(t, extract, e2e, keras):
    """The rows of decode, head training, export and the end-to-end train and sweep times."""
    d = rate("decode/jpeg32_preprocess")
    t.row("JPEG decode + preprocess 32x32", "images/s", d, None, None, ">= 20000 images/s",
          None if d is None else d >= 20000)
    h = crit("head/epoch_5000x512_batch128")
    t.row("head training, 1 epoch 5000x512", "s", h[1] if h else None, None, None, "(no target)", None)
    x = crit("export/build_and_write")
    t.row("ONNX export (build + write)", "s", x[1] if x else None, None, None, "(no target)", None)
    s = e2e.get("train_cold_s")
    minimum = N_IMAGES / extract if extract else None
    t.row("pipe train, cold cache, vs 6000 / extraction rate", "s", s, minimum,
          s / minimum if s and minimum else None, "<= 1.25x", None if not (s and minimum) else s <= 1.25 * minimum)
    k = keras.get("fit_evaluate_s")
    t.row("pipe train, cold cache, vs Keras seed measured now", "s", s, k,
          k / s if s and k else None, ">= 2.5x faster", None if not (s and k) else k / s >= 2.5)
    w = e2e.get("sweep_warm_s")
    t.row("pipe sweep 5x15, warm cache", "s", w, None, None, "< 60 s", None if w is None else w < 60)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"


def result(row):
    """pass, FAIL, MISSING (a figure of the row was not measured), or - (a row without a target)."""
    if row["pipe"] is None or (row["ratio"] is None and row["reference"] is not None) \
            or (row["target"].startswith(">=") and row["pass"] is None):
        return "MISSING"
    return "-" if row["pass"] is None else ("pass" if row["pass"] else "FAIL")


def print_table(rows):
    print()
    head = f"{'task':<64} {'pipe':>11} {'reference':>11} {'ratio':>7}  {'target':<34} result"
    print(head)
    print("-" * len(head))
    for r in rows:
        res = result(r)
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(f"{r['task'] + ' (' + r['unit'] + ')':<64} {fmt(r['pipe'], r['unit']):>11} "
              f"{fmt(r['reference'], r['unit']):>11} {ratio:>7}  {r['target']:<34} {res}")


def main():
    x, i = extraction_results(), inference_results()
    # Fine-tuning: one epoch of 2,560 CIFAR-10 images, and one of the 245 training photos (photos preset), in pipe
    # and in PyTorch, alternating (ABAB); means over rounds.
    ft = {"cifar": (round_results("finetune_pipe_", "finetune_pipe.json"),
                    round_results("reference_finetune_", "reference_finetune.json")),
          "photos": (round_results("photo_finetune_pipe_", "finetune_photos_pipe.json"),
                     round_results("reference_photo_finetune_", "reference_finetune_photos.json"))}
    e2e = load(os.path.join(OUT, "e2e.json")) or {}
    keras = load(os.path.join(OUT, "keras_seed.json")) or {}
    t = Table()
    speed_rows(t, x, i, ft)
    other_rows(t, x["extract"], e2e, keras)
    rows = t.rows
    print_table(rows)
    info = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.processor()
            or platform.machine(), "cpus": os.cpu_count(), "torch_threads": x["torch_ref"].get("threads"),
            "ort_threads": i["ort_ref"].get("threads"),
            "extract_rounds": {"pipe": x["tch_rates"], "pytorch": x["ref_rates"]},
            "extract224_rounds": {"pipe": x["tch224_rates"], "pytorch": x["ref224_rates"]},
            "infer_jpeg_rounds": i["jpeg_rates"],
            "ort_rounds": i["ort_rounds"], "finetune_rounds": {"pipe": ft["cifar"][0], "pytorch": ft["cifar"][1]},
            "photo_finetune_rounds": {"pipe": ft["photos"][0], "pytorch": ft["photos"][1]},
            "e2e": e2e, "keras_seed": keras, "rows": rows}
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"\nwritten to {OUT}/summary.json")
    failed = [r["task"] for r in rows if result(r) in ("FAIL", "MISSING")]
    if failed:
        print(f"{len(failed)} row(s) failed or are missing a figure (see the messages above; `make setup` "
              f"provides weights and data): {'; '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
