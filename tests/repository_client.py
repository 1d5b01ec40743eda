"""Talks to `pipe serve --model-repository DIR --model-control-mode explicit --load-model a` with the
official Triton HTTP client (tritonclient[http]).

Run by tests/serve.rs. The repository holds model `a` (versions 1 and 2, version policy all) and
model `b` (version 1, as `pipe export --triton` writes it). Checks the repository index, readiness
and metadata per version, loads `b` and unloads `a` through the repository API, refuses what cannot
be done, and writes the outputs of every model version on the images in --pixels (uint8 NHWC RGB) to
--out as JSON, for the Rust test to compare with `pipe infer` on each version's file. Exits non-zero
with a message on the first failed check.
"""

import argparse
import json

import numpy as np
import tritonclient.http as httpclient

from triton_checks import check, expect_error


def states(client):
    return {(m["name"], m.get("version")): m["state"] for m in client.get_model_repository_index()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--pixels", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    images = np.fromfile(a.pixels, dtype=np.uint8).reshape(a.n, a.size, a.size, 3).astype(np.float32)
    client = httpclient.InferenceServerClient(url=a.url)

    def infer(model, version=""):
        inp = httpclient.InferInput("images", list(images.shape), "FP32")
        inp.set_data_from_numpy(images, binary_data=True)
        result = client.infer(model, [inp], model_version=version)
        response = result.get_response()
        (out,) = response["outputs"]
        return response["model_version"], result.as_numpy(out["name"]).tolist()

    check("model_repository" in client.get_server_metadata()["extensions"], "repository extension")
    got = states(client)
    check(got == {("a", "1"): "READY", ("a", "2"): "READY", ("b", None): "UNAVAILABLE"}, f"index at start: {got}")
    ready = client.get_model_repository_index(query_params=None)
    check(len(ready) == 3, f"index: {ready}")
    check(client.is_model_ready("a") and client.is_model_ready("a", "1") and client.is_model_ready("a", "2"), "a ready")
    check(not client.is_model_ready("b"), "b not ready before its load")
    check(client.get_model_metadata("a")["versions"] == ["1", "2"], "a's versions")
    check(client.get_model_metadata("a", "1")["versions"] == ["1"], "a version 1's metadata")
    results = {}
    for key, model, version, served in [("a", "a", "", "2"), ("a1", "a", "1", "1"), ("a2", "a", "2", "2")]:
        v, rows = infer(model, version)
        check(v == served, f"{key}: answered by version {v}, not {served}")
        results[key] = rows
    expect_error(lambda: infer("b"), "not served here")

    client.load_model("b")
    check(client.is_model_ready("b") and client.is_model_ready("b", "1"), "b ready after its load")
    check(states(client)[("b", "1")] == "READY", "b in the index")
    v, results["b"] = infer("b")
    check(v == "1", f"b answered by version {v}")
    expect_error(lambda: client.load_model("no_such_model"), "no model 'no_such_model'")
    expect_error(lambda: client.load_model("b", config='{"max_batch_size": 4}'), "not supported")

    client.unload_model("a")
    check(not client.is_model_ready("a"), "a not ready after its unload")
    got = states(client)
    check(got == {("a", None): "UNAVAILABLE", ("b", "1"): "READY"}, f"index after unloading a: {got}")
    expect_error(lambda: infer("a"), "not served here")
    # b keeps answering, the same as before.
    check(infer("b")[1] == results["b"], "b after a's unload")
    client.load_model("a")
    check(infer("a", "1")[1] == results["a1"], "a version 1 reloaded")
    check(client.is_server_ready(), "server ready throughout")
    with open(a.out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
