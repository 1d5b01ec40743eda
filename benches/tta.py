"""The gain of test-time augmentation by flip (`pipe export --tta flip`): for the runs of `make results`
(target/results/runs: the seed run and the photos preset), the plain export and the flip export
classify their evaluation folders with `pipe infer --backend ort`; prints the accuracy of each, and
exits 1 when the flip export gains a point or more on either (the GUIDE says it gains less than a
point, so no preset uses it).
Run `make results` first. About 5 minutes on 2 cores (the flip export does twice the work)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "target", "results")
PIPE = os.path.join(ROOT, "target", "release", "pipe")
CASES = [("seed", "data/cifar10/test"), ("photos", "data/hymenoptera/val")]


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode not in (0, 3):
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return r


def main():
    results = {}
    for name, folder in CASES:
        for tta in (False, True):
            model = os.path.join(OUT, f"{name}{'-tta' if tta else ''}.onnx")
            run([PIPE, "export", model, "--run", name, "--runs-dir", os.path.join(OUT, "runs"), "--verify-images", "16"]
                + (["--tta", "flip"] if tta else []))
            doc = json.loads(run([PIPE, "infer", "--backend", "ort", "--format", "json", "--model", model,
                                  os.path.join(ROOT, folder)]).stdout)
            acc = doc["correct"] / doc["labelled"]
            results[f"{name}{' tta flip' if tta else ''}"] = dict(correct=doc["correct"], images=doc["labelled"],
                                                                  accuracy=acc)
            print(f"{name:<7} {'--tta flip' if tta else 'plain':<10} {doc['correct']}/{doc['labelled']} = {acc:.4f}",
                  flush=True)
    with open(os.path.join(OUT, "tta.json"), "w") as f:
        json.dump(results, f, indent=1)
    # The GUIDE's claim: flip TTA gains less than a point on these models (so no preset uses it).
    gains = {n: results[f"{n} tta flip"]["accuracy"] - results[n]["accuracy"] for n, _ in CASES}
    if any(g >= 0.01 for g in gains.values()):
        sys.exit(f"FAIL: --tta flip gains a point or more somewhere ({gains}): the GUIDE's claim is stale")


if __name__ == "__main__":
    main()
