"""Talks to `pipe serve --model-repository DIR --grpc-port P` with the official Triton gRPC client
(tritonclient[grpc]) and, for the same requests, with the HTTP client.

Run by tests/serve.rs on the repository of tests/repository_client.py (model `a`: versions 1 and 2;
model `b`: version 1, logits), every model loaded. Checks health, metadata and configuration over
gRPC, that gRPC answers (raw contents, typed fp32 contents, classification strings) are identical
to HTTP's, the repository calls, and that a message over the server's limit is refused with
RESOURCE_EXHAUSTED while the server keeps serving. Writes the gRPC outputs per model version to --out
as JSON for the Rust test to compare with `pipe infer`. Exits non-zero on the first failed check.
"""

import argparse
import json
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from triton_checks import check


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--pixels", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    images = np.fromfile(a.pixels, dtype=np.uint8).reshape(a.n, a.size, a.size, 3).astype(np.float32)
    g = grpcclient.InferenceServerClient(url=a.grpc)
    h = httpclient.InferenceServerClient(url=a.http)

    check(g.is_server_live() and g.is_server_ready(), "server live and ready over gRPC")
    check(g.is_model_ready("a") and g.is_model_ready("a", "1") and g.is_model_ready("b"), "models ready")
    check(not g.is_model_ready("a", "3") and not g.is_model_ready("nope"), "unknown versions not ready")
    meta = g.get_server_metadata(as_json=True)
    check(meta["name"] == "pipe" and "model_repository" in meta["extensions"], f"server metadata {meta}")
    for model, version in [("a", ""), ("a", "1"), ("b", "")]:
        gm = g.get_model_metadata(model, version, as_json=True)
        hm = h.get_model_metadata(model, version)
        check(gm["versions"] == hm["versions"] and gm["platform"] == hm["platform"], f"metadata {gm} {hm}")
        check([i["shape"] for i in gm["inputs"]] == [[str(d) for d in i["shape"]] for i in hm["inputs"]],
              f"input shapes {gm} {hm}")
        gc = g.get_model_config(model, version, as_json=True)["config"]
        hc = h.get_model_config(model, version)
        check(gc["name"] == hc["name"] and int(gc["max_batch_size"]) == hc["max_batch_size"], f"config {gc} {hc}")
        check(gc["input"][0]["format"] == "FORMAT_NHWC", f"config input {gc}")
        # The server's default --instances 2, on the CPU, over both protocols.
        check(gc["instance_group"] == hc["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}],
              f"instance groups {gc.get('instance_group')} {hc.get('instance_group')}")
        # Each model's version policy, from its config.pbtxt ('a': all; 'b': Triton's default).
        policy = {"a": {"all": {}}, "b": {"latest": {"num_versions": 1}}}[model]
        check(gc["version_policy"] == policy and hc["version_policy"] == policy,
              f"version policy {gc.get('version_policy')} {hc.get('version_policy')}")

    def infer(client, module, model, version="", classes=0):
        inp = module.InferInput("images", list(images.shape), "FP32")
        inp.set_data_from_numpy(images)
        out = module.InferRequestedOutput(output_name(model), class_count=classes)
        r = client.infer(model, [inp], model_version=version, outputs=[out])
        return r.get_response(as_json=True)["model_version"] if module is grpcclient else r.get_response()["model_version"], r.as_numpy(output_name(model))

    names = {}

    def output_name(model):
        if model not in names:
            names[model] = h.get_model_metadata(model)["outputs"][0]["name"]
        return names[model]

    results = {}
    for key, model, version, served in [("a", "a", "", "2"), ("a1", "a", "1", "1"), ("b", "b", "", "1")]:
        gv, gout = infer(g, grpcclient, model, version)
        hv, hout = infer(h, httpclient, model, version)
        check(gv == hv == served, f"{key}: versions {gv} {hv}, not {served}")
        check(gout.dtype == np.float32 and np.array_equal(gout, hout), f"{key}: gRPC and HTTP outputs differ")
        gc = infer(g, grpcclient, model, version, classes=3)[1]
        hc = infer(h, httpclient, model, version, classes=3)[1]
        check(gc.shape == (a.n, 3) and (gc == hc).all(), f"{key}: classification {gc[:1]} vs {hc[:1]}")
        results[key] = gout.tolist()

    # Typed contents (fp32_contents) instead of raw_input_contents: the same answer.
    request = service_pb2.ModelInferRequest(model_name="a", model_version="1")
    tensor = request.inputs.add(name="images", datatype="FP32", shape=list(images.shape))
    tensor.contents.fp32_contents.extend(images.ravel().tolist())
    response = g._client_stub.ModelInfer(request)
    typed = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(a.n, -1)
    check(np.array_equal(typed, np.array(results["a1"], dtype=np.float32)), "typed fp32_contents")

    # Calls pipe does not implement answer UNIMPLEMENTED.
    try:
        g.get_inference_statistics()
        sys.exit("ModelStatistics answered")
    except InferenceServerException as e:
        check(e.status() == str(grpc.StatusCode.UNIMPLEMENTED), f"statistics: {e.status()}")

    # Repository calls over gRPC.
    index = g.get_model_repository_index(as_json=True)["models"]
    check({(m["name"], m.get("version")) for m in index} == {("a", "1"), ("a", "2"), ("b", "1")}, f"index {index}")
    g.unload_model("b")
    check(not g.is_model_ready("b"), "b unloaded over gRPC")
    g.load_model("b")
    check(g.is_model_ready("b"), "b loaded over gRPC")

    # A message over the limit: RESOURCE_EXHAUSTED, then the server keeps answering.
    big = np.zeros((128, a.size, a.size, 3), dtype=np.float32)
    inp = grpcclient.InferInput("images", list(big.shape), "FP32")
    inp.set_data_from_numpy(big)
    try:
        g.infer("a", [inp])
        sys.exit("an oversized message was accepted")
    except InferenceServerException as e:
        check(e.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED), f"oversized: {e.status()} {e}")
        print(f"oversized request refused: {e.status()}: {e.message()}")
    check(np.array_equal(infer(g, grpcclient, "a", "1")[1], np.array(results["a1"], dtype=np.float32)),
          "answers after the oversized message")
    with open(a.out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
