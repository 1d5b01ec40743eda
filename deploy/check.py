"""Checks the Kubernetes manifests in this folder without a cluster: every file parses as YAML, has
the fields its kind requires, and the pieces fit together (labels and selectors, the probes on the
KServe v2 health endpoints of the container's port, the Service's target port, the autoscaler's
target, resources, and `pipe serve` options that exist). Run by tests/serve.rs; exits non-zero with
the list of problems.

    python deploy/check.py [FOLDER]
"""

import pathlib
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
                need(a in help_text, f"pipe serve has no option {a}")
    if problems:
        sys.exit("\n".join(problems))
    print(f"manifests ok: {', '.join(sorted(docs))}")


if __name__ == "__main__":
    main()
