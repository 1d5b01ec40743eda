"""Talks to a running `pipe serve` with the official Triton HTTP client (tritonclient[http]).

Run by tests/serve.rs: checks health, server and model metadata, model configuration and readiness
(plain and versioned), then classifies the images in --pixels (uint8 NHWC RGB, as pipe decodes them)
with JSON tensors, binary tensors both ways, the default outputs, classification (binary and JSON)
and concurrent single-image requests, and writes every result to --out as JSON for the Rust test to
compare with `pipe infer`. Exits non-zero with a message on the first failed check.
"""

import argparse
import json

import numpy as np
import tritonclient.http as httpclient

from triton_checks import check, expect_error


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--pixels", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    client = httpclient.InferenceServerClient(url=a.url, concurrency=8)
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    check(client.is_model_ready(a.model), "model ready")
    check(client.is_model_ready(a.model, "1"), "model version 1 ready")
    check(not client.is_model_ready("no_such_model"), "unknown model not ready")
    server = client.get_server_metadata()
    check(server["name"] == "pipe", f"server name: {server}")
    for ext in ("binary_tensor_data", "classification"):
        check(ext in server["extensions"], f"extension {ext}: {server}")
    meta = client.get_model_metadata(a.model)
    check(meta["name"] == a.model and meta["versions"] == ["1"], f"model metadata: {meta}")
    check(meta == client.get_model_metadata(a.model, "1"), "versioned metadata")
    (inp,) = meta["inputs"]
    check(inp == {"name": "images", "datatype": "FP32", "shape": [-1, a.size, a.size, 3]}, f"input: {inp}")
    (out,) = meta["outputs"]
    check(out["datatype"] == "FP32" and out["shape"][0] == -1, f"output: {out}")
    config = client.get_model_config(a.model)
    check(config["max_batch_size"] >= 1 and config["input"][0]["dims"] == [a.size, a.size, 3], f"config: {config}")
    expect_error(lambda: client.get_model_metadata("no_such_model"), "no_such_model")

    name = out["name"]
    x = np.fromfile(a.pixels, dtype=np.uint8).reshape(a.n, a.size, a.size, 3).astype(np.float32)

    def infer(images, binary_in, binary_out=None, class_count=0):
        t = httpclient.InferInput("images", list(images.shape), "FP32")
        t.set_data_from_numpy(images, binary_data=binary_in)
        outputs = None
        if binary_out is not None:
            outputs = [httpclient.InferRequestedOutput(name, binary_data=binary_out, class_count=class_count)]
        return client.infer(a.model, [t], outputs=outputs, request_id="req-1")

    results = {}
    for key, binary_in, binary_out in [
        ("json", False, False),
        ("binary", True, True),
        ("binary_in_json_out", True, False),
        ("default_outputs", True, None),
    ]:
        r = infer(x, binary_in, binary_out)
        check(r.get_response()["id"] == "req-1", "request id echoed")
        results[key] = r.as_numpy(name).tolist()
    for key, binary in [("classification", True), ("classification_json", False)]:
        labels = infer(x, binary, binary, class_count=3).as_numpy(name)
        check(labels.shape == (a.n, 3), f"classification shape {labels.shape}")
        results[key] = [[s.decode() if isinstance(s, bytes) else s for s in row] for row in labels]
    pending = []
    for i in range(a.n):
        t = httpclient.InferInput("images", [1, a.size, a.size, 3], "FP32")
        t.set_data_from_numpy(x[i : i + 1], binary_data=True)
        pending.append(client.async_infer(a.model, [t]))
    results["single"] = [p.get_result().as_numpy(name)[0].tolist() for p in pending]

    bad = httpclient.InferInput("pixels", [1, a.size, a.size, 3], "FP32")
    bad.set_data_from_numpy(x[:1])
    results["wrong_input_error"] = expect_error(lambda: client.infer(a.model, [bad]), "pixels")
    client.close()
    with open(a.out, "w") as f:
        json.dump(results, f)
    print(f"tritonclient: {len(results)} checks on {a.n} images ok")


if __name__ == "__main__":
    main()
