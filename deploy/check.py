"""Checks the Kubernetes manifests in this folder without a cluster: every file parses as YAML, has
the fields its kind requires, and the pieces fit together (labels and selectors, the probes on the
KServe v2 health endpoints of the container's port, the Service's target port, the autoscaler's
target, resources, and `pipe serve` options that exist), and the Indexed Jobs in jobs/ that run `pipe
infer --shard` or `pipe train --extract-shard` (see check_shard_job). Run by tests/serve.rs; exits non-zero with the list of
problems.

    python deploy/check.py [FOLDER]
"""

import pathlib
import re
import subprocess
import sys

import yaml


def main():
    folder = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent)
    pipe = sys.argv[2] if len(sys.argv) > 2 else None
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
    jobs = sorted((folder / "jobs").glob("*.yaml"))
    helps = {}
    for path in jobs:
        for job in yaml.safe_load_all(path.read_text()):
            problems.extend(f"{path.name}: {p}" for p in check_shard_job(job, pipe, helps))
    if problems:
        sys.exit("\n".join(problems))
    print(f"manifests ok: {', '.join(sorted(docs))}" + "".join(f", jobs/{p.name}" for p in jobs))


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
