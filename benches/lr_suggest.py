"""What `pipe lr-find`'s suggestions are worth: on the ants-and-bees photos (`--preset photos`) and
the CIFAR-10 seed recipe, runs `pipe lr-find` (100 steps), then trains the recipe at the valley
suggestion (the default `--suggest`), at the steepest-descent one and at the recipe's own `--lr`,
with seeds 1 to 5 (photos) and 1 to 3 (seed recipe), and prints each test accuracy and the means.
Exits 1 when, on the photos, the valley suggestion's mean accuracy is below the steepest one's (the
GUIDE says valley is the better default there), or when either suggestion trains the seed recipe
worse than its own 1e-4 (the GUIDE says both beat it).
Needs `make setup` (weights, photos, CIFAR-10). Uses the default feature cache: the first run
extracts the features (a few minutes on 2 cores), later runs take about a minute. Writes
target/lr-suggest/summary.json."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "target", "lr-suggest")
PIPE = os.path.join(ROOT, "target", "release", "pipe")
CASES = [
    ("photos", ["--data", os.path.join(ROOT, "data", "hymenoptera"), "--preset", "photos"], [1, 2, 3, 4, 5]),
    ("seed", [], [1, 2, 3]),
]


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if r.returncode not in (0, 3):
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return r


def accuracy(stdout):
    """The test accuracy on `pipe train`'s `test loss ... test accuracy A` line."""
    for line in stdout.splitlines():
        if line.startswith("test loss"):
            return float(line.split("test accuracy")[1].split()[0])
    sys.exit(f"no test accuracy in:\n{stdout[-2000:]}")


def main():
    results = {}
    for name, recipe, seeds in CASES:
        lr_dir = os.path.join(OUT, f"lr-find-{name}")
        run([PIPE, "lr-find", *recipe, "--out", lr_dir])
        with open(os.path.join(lr_dir, "lr_find.json")) as f:
            found = json.load(f)
        rates = {"valley": found["suggestions"]["valley"], "steepest": found["suggestions"]["steepest"],
                 "recipe": found["recipe_lr"]}
        results[name] = {}
        for rule, lr in rates.items():
            accs = []
            for seed in seeds:
                out = run([PIPE, "train", *recipe, "--lr", f"{lr:.3g}", "--seed", str(seed),
                           "--runs-dir", os.path.join(OUT, "runs"), "--name", f"{name}-{rule}-{seed}"]).stdout
                accs.append(accuracy(out))
            mean = sum(accs) / len(accs)
            results[name][rule] = dict(lr=lr, accuracies=accs, mean=mean)
            print(f"{name:<7} {rule:<9} lr {lr:.3g}  " + " ".join(f"{a:.4f}" for a in accs) + f"  mean {mean:.4f}",
                  flush=True)
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(results, f, indent=1)
    photos, seed = results["photos"], results["seed"]
    failed = []
    if photos["valley"]["mean"] < photos["steepest"]["mean"]:
        failed.append("on the photos the valley suggestion trains worse than the steepest one")
    if min(seed["valley"]["mean"], seed["steepest"]["mean"]) <= seed["recipe"]["mean"]:
        failed.append("a suggestion trains the seed recipe no better than its own --lr")
    if failed:
        sys.exit("FAIL: " + "; ".join(failed) + ": the GUIDE's claims are stale")


if __name__ == "__main__":
    main()
