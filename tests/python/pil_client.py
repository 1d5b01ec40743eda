"""A client that decodes images itself, as most clients of an image model do: PIL (libjpeg-turbo)
decodes each file to RGB, the pixels go to the exported model in onnxruntime as float32 NHWC 0..255
(the model's own contract), in batches of 256. For images already at the model's input size (the
resize is the client's business; CIFAR-10's 32x32 files need none).

Usage: pil_client.py MODEL LIST OUT
LIST: a file of image paths, one per line. OUT: JSON {"paths": [...], "probabilities": [[...], ...]}.
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def main():
    model, listing, out = sys.argv[1:4]
    paths = [p for p in open(listing).read().splitlines() if p]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    rows = []
    for start in range(0, len(paths), 256):
        batch = []
        for p in paths[start:start + 256]:
            im = Image.open(p).convert("RGB")
            if im.size != (size, size):
                sys.exit(f"{p}: {im.size[0]}x{im.size[1]}, the model takes {size}x{size}")
            batch.append(np.asarray(im, dtype=np.float32))
        (probs,) = session.run(None, {"images": np.stack(batch)})
        rows.extend(probs.tolist())
    with open(out, "w") as f:
        json.dump({"paths": paths, "probabilities": rows}, f)


if __name__ == "__main__":
    main()
