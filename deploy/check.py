"""Checks the Kubernetes manifests in this folder without a cluster: every file parses as YAML, has
the fields its kind requires, and the pieces fit together (labels and selectors, the probes on the
KServe v2 health endpoints of the container's port, the Service's target port, the autoscaler's
target, resources, and `pipe serve` options that exist), the Indexed Jobs in jobs/ that run `pipe
infer --shard` or `pipe train --extract-shard` (see check_shard_job), and the memory of each serving
Deployment (the base one and each overlay's, see check_memory) against the server's peak resident
memory measured by `make loadtest` for a model of that input size (measured/*.json, and the files
given with --measured). Run by tests/serve.rs and `make loadtest`; exits non-zero with the list of
problems.

    python deploy/check.py [FOLDER [PIPE]] [--measured SUMMARY.json ...]
"""

import argparse
import copy
import json
import pathlib
import re
import subprocess
import sys

import yaml

# The annotation that says for which model input size (pixels) a Deployment's memory is set.
INPUT_SIZE = "pipe/model-input-size"
# A memory limit at least this many times the measured peak (the request at least the peak itself).
HEADROOM = 1.25
# `pipe serve`'s defaults for the options that set its memory: model instances, and the batch bound
# before the input size lowers it.
MEMORY_OPTIONS = {"--instances": "2", "--max-batch": "32"}


def main():
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("folder", nargs="?", default=pathlib.Path(__file__).parent, type=pathlib.Path)
    cli.add_argument("pipe", nargs="?", help="the pipe binary, to check options against its --help "
                     "(default: the repository's target/release/pipe when it is built)")
    cli.add_argument("--measured", action="append", default=[], type=pathlib.Path,
                     help="a load test's summary JSON (target/loadtest/summary-*.json) to check too")
    opts = cli.parse_args()
    folder, pipe = opts.folder, opts.pipe
    built = pathlib.Path(__file__).resolve().parent.parent / "target" / "release" / "pipe"
    if pipe is None and built.is_file():
        pipe = str(built)
    docs = {}
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs.setdefault(doc["kind"], doc)
    problems = []

    def need(cond, what):
        if not cond:
            problems.append(what)

    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "Kustomization"):
        need(kind in docs, f"no {kind}")
    if problems:
        sys.exit("\n".join(problems))
    dep, svc, hpa, kus = (docs[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "Kustomization"))
    files = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    need(set(kus["resources"]) == files, f"kustomization resources {kus['resources']} != {sorted(files)}")
    need(dep["apiVersion"] == "apps/v1", "Deployment apiVersion")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    need(dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), "Deployment selector does not match its pods")
    need(svc["spec"]["selector"].items() <= labels.items(), "Service selector does not match the pods")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        get = container[probe]["httpGet"]
        need(get["path"] == path, f"{probe} path {get['path']} != {path}")
        need(get["port"] in ports or get["port"] in ports.values(), f"{probe} port {get['port']} not a container port")
    (sport,) = svc["spec"]["ports"]
    need(sport["targetPort"] in ports or sport["targetPort"] in ports.values(), "Service targetPort is not a container port")
    for kind in ("requests", "limits"):
        need({"cpu", "memory"} <= container["resources"][kind].keys(), f"resources.{kind} needs cpu and memory")
    target = hpa["spec"]["scaleTargetRef"]
    need((target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"]), "HPA does not target the Deployment")
    need(1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], "HPA replica bounds")
    need(hpa["apiVersion"] == "autoscaling/v2", "HPA apiVersion")
    args = container["args"]
    need(all(isinstance(a, str) for a in args), "container args must be strings")
    if pipe:
        # Every option the manifest passes must be one `pipe serve` knows.
        help_text = subprocess.run([pipe, "serve", "--help"], capture_output=True, text=True, check=True).stdout
        for a in args:
            if a.startswith("--"):
                need(a in options(help_text), f"pipe serve has no option {a}")
    serving = {"deploy": dep}
    for kustomization in sorted(folder.glob("*/kustomization.yaml")):
        name, overlay = kustomization.parent.name, yaml.safe_load(kustomization.read_text())
        need(overlay.get("resources") in (["../"], [".."]), f"{name}/kustomization.yaml must build on ../")
        serving[name] = copy.deepcopy(dep)
        for patch in overlay.get("patches", []):
            doc = yaml.safe_load((kustomization.parent / patch["path"]).read_text())
            need((doc.get("kind"), doc.get("metadata", {}).get("name")) == ("Deployment", dep["metadata"]["name"]),
                 f"{name}/{patch['path']} must patch the Deployment {dep['metadata']['name']}")
            serving[name] = merge(serving[name], doc)
    measured = sorted((folder / "measured").glob("*.json")) + opts.measured
    problems.extend(check_memory(serving, [(p, json.loads(p.read_text())) for p in measured]))
    jobs = sorted((folder / "jobs").glob("*.yaml"))
    helps = {}
    for path in jobs:
        for job in yaml.safe_load_all(path.read_text()):
            problems.extend(f"{path.name}: {p}" for p in check_shard_job(job, pipe, helps))
    if problems:
        sys.exit("\n".join(problems))
    print(f"manifests ok: {', '.join(sorted(docs))}" + "".join(f", jobs/{p.name}" for p in jobs)
          + "".join(f", {n}/" for n in sorted(serving) if n != "deploy")
          + f"; memory against {len(measured)} measured peak(s)"
          + (f"; options against {pipe}" if pipe else
             "; options NOT checked (no pipe binary: build it, or name it after the folder)"))


def merge(base, patch):
    """`base` with `patch` merged in as kustomize merges a strategic-merge patch of these fields:
    mappings key by key, lists of named items (containers) item by name, anything else replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base + patch):
        out = list(base)
        for item in patch:
            at = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if at is None:
                out.append(item)
            else:
                out[at] = merge(out[at], item)
        return out
    return patch


def mib(quantity):
    """A Kubernetes memory quantity ("896Mi", "4Gi", "1500M", bytes) in MiB."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "": 1}
    m = re.fullmatch(r"([0-9.]+)([KMGT]i|[kMGT]|)", str(quantity))
    if not m:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return float(m.group(1)) * units[m.group(2)] / 2**20


def check_memory(serving, measured):
    """The problems of the serving Deployments' memory (`serving`: name -> Deployment, its overlays
    applied) against the load tests' measured peaks (`measured`: (file, summary) pairs).

    Each Deployment says with the annotation pipe/model-input-size for which model input size its
    memory is set, since the server's memory follows the input size and the batch bound (a
    384-pixel photo model needs several times a 32-pixel one's). Each measurement with the same
    backend and input size must have run with the same --instances and --max-batch (pipe serve's
    defaults where not given) and fit: the request at least the measured peak, the limit at least
    HEADROOM times it. Every Deployment needs at least one such measurement."""
    problems = []
    checked = {name: 0 for name in serving}
    for name, dep in serving.items():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        size = dep["metadata"].get("annotations", {}).get(INPUT_SIZE, "")
        if not str(size).isdigit():
            problems.append(f"{name}: the Deployment needs the annotation {INPUT_SIZE} (the model input size, pixels, its memory is set for)")
            continue
        args = container["args"]
        backend = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--backend"), "ort")
        res = container["resources"]
        request, limit = mib(res["requests"]["memory"]), mib(res["limits"]["memory"])
        if request > limit:
            problems.append(f"{name}: memory request {res['requests']['memory']} over its limit {res['limits']['memory']}")
        for path, m in measured:
            if str(m.get("input_size")) != str(size) or m.get("backend") != backend:
                continue
            checked[name] += 1
            ran = memory_options(m.get("serve_args", []))
            wants = memory_options(args)
            if ran != wants:
                problems.append(f"{name}: {path.name} was measured with {ran}, the Deployment runs {wants}; measure again "
                                f"with LOADTEST_SERVE_ARGS='{' '.join(f'{k} {v}' for k, v in wants.items())}'")
                continue
            peak = m["rss_peak_mib"]
            if request < peak:
                problems.append(f"{name}: memory request {res['requests']['memory']} ({request:.0f} MiB) is below the "
                                f"peak of {peak:.0f} MiB that {path.name} measured for a {size}-pixel model")
            if limit < HEADROOM * peak:
                problems.append(f"{name}: memory limit {res['limits']['memory']} ({limit:.0f} MiB) is below {HEADROOM}x the "
                                f"peak of {peak:.0f} MiB that {path.name} measured for a {size}-pixel model")
    for name, n in checked.items():
        if n == 0 and not any(p.startswith(f"{name}:") for p in problems):
            problems.append(f"{name}: no measured peak for its model input size and backend (make loadtest writes one)")
    return problems


def memory_options(args):
    """The values of the options that set the server's memory, pipe serve's defaults where absent."""
    out = dict(MEMORY_OPTIONS)
    for i, a in enumerate(args[:-1]):
        if a in out:
            out[a] = args[i + 1]
    return out


def options(help_text):
    """The long options a `--help` text lists (the lines that start with them)."""
    return set(re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", help_text))


def check_shard_job(job, pipe, helps):
    """The problems of an Indexed Job that runs `pipe infer --shard` or `pipe train --extract-shard`:
    every shard index has a pod (completions equal to the N of the shard option), the index comes
    from JOB_COMPLETION_INDEX (declared in the container's env so that $(...) expands), each infer
    shard writes its own output file and the extraction's cache is on a shared volume, the options
    exist (when `pipe` is given, in its `--help`; `helps` caches those texts), and retries fit an
    Indexed Job."""
    problems = []

    def need(cond, what):
        if not cond:
            problems.append(what)

    need(job.get("apiVersion") == "batch/v1" and job.get("kind") == "Job", "not a batch/v1 Job")
    spec = job.get("spec", {})
    need(spec.get("completionMode") == "Indexed", "completionMode must be Indexed")
    completions = spec.get("completions")
    need(isinstance(completions, int) and completions >= 1, "completions must be a positive integer")
    need(1 <= spec.get("parallelism", 1) <= (completions or 1), "parallelism must be between 1 and completions")
    pod = spec.get("template", {}).get("spec", {})
    if spec.get("podFailurePolicy"):
        need(pod.get("restartPolicy") == "Never", "podFailurePolicy needs restartPolicy Never")
    need(pod.get("restartPolicy") in ("Never", "OnFailure"), "restartPolicy must be Never or OnFailure")
    containers = pod.get("containers", [])
    need(len(containers) == 1, "one container expected")
    if len(containers) != 1:
        return problems
    (container,) = containers
    args = container.get("args", [])
    need(all(isinstance(a, str) for a in args), "container args must be strings")
    command = " ".join(container.get("command", []))
    sub = next((c for c in ("infer", "train") if f"pipe {c}" in command or args[:1] == [c]), None)
    need(sub is not None, "the container runs neither pipe infer nor pipe train")
    if sub is None:
        return problems
    flag = {"infer": "--shard", "train": "--extract-shard"}[sub]
    env = {e["name"]: e for e in container.get("env", [])}
    index = env.get("JOB_COMPLETION_INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    need(index == "metadata.annotations['batch.kubernetes.io/job-completion-index']",
         "JOB_COMPLETION_INDEX must be declared in env from the job-completion-index annotation")
    def values(*names):
        return [args[i + 1] for i, a in enumerate(args[:-1]) if a in names]

    shard = values(flag)
    need(len(shard) == 1, f"exactly one {flag} expected")
    if shard:
        k, _, n = shard[0].partition("/")
        need(k == "$(JOB_COMPLETION_INDEX)", f"{flag} {shard[0]}: the index must be $(JOB_COMPLETION_INDEX)")
        need(n.isdigit() and int(n) == completions, f"{flag} {shard[0]}: N must equal completions ({completions})")
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]

    def on_volume(path):
        return any(path.startswith(m.rstrip("/") + "/") for m in mounts)

    if sub == "infer":
        output = values("--output", "-o")
        need(len(output) == 1 and "$(JOB_COMPLETION_INDEX)" in output[0],
             "each shard needs its own --output (a path holding $(JOB_COMPLETION_INDEX))")
        if output:
            need(on_volume(output[0]), f"--output {output[0]} is not on a mounted volume")
    else:
        cache = values("--cache-dir")
        need(len(cache) == 1 and on_volume(cache[0]),
             "the shards need one --cache-dir on a mounted (shared) volume")
        need("--no-cache" not in args, "--extract-shard writes into the feature cache; no --no-cache")
    for kind in ("requests", "limits"):
        need({"cpu", "memory"} <= container.get("resources", {}).get(kind, {}).keys(),
             f"resources.{kind} needs cpu and memory")
    if pipe:
        if sub not in helps:
            helps[sub] = subprocess.run([pipe, sub, "--help"], capture_output=True, text=True, check=True).stdout
        for a in args:
            if a.startswith("--"):
                need(a in options(helps[sub]), f"pipe {sub} has no option {a}")
    return problems


if __name__ == "__main__":
    main()
