"""PyTorch reference for head training on the full CIFAR-10 training set.

Trains the same head as `pipe train` (Flatten -> Linear 512->256 -> ReLU -> Dropout 0.5 -> Linear 256->10,
PyTorch's default nn.Linear initialisation), with the same optimizer (SGD, momentum 0.9, batch 128,
shuffled every epoch) on the same frozen-base features: the ones pipe's feature cache holds, so both
sides see identical inputs. Labels follow pipe's image-folder order (classes sorted by name, files sorted
by name within a class), which for CIFAR-10's folders is 5,000 training and 1,000 test images per class
in label order.

    .venv/bin/python benches/reference/torch_head.py TRAIN.safetensors TEST.safetensors \
        --epochs 15 --lr 1e-3 --seeds 1,2,3

Prints the final test accuracy per seed and their mean.
"""

import argparse
import json
import struct

import torch


def load_features(path):
    """The `features` tensor of a safetensors file (F32), read by hand: an 8-byte little-endian header
    length, the JSON header, then the raw data (the venv has no safetensors package)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header["features"]
    assert meta["dtype"] == "F32", meta
    start, end = meta["data_offsets"]
    return torch.frombuffer(bytearray(data[start:end]), dtype=torch.float32).reshape(meta["shape"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train")
    ap.add_argument("test")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    xtr = load_features(a.train)
    xte = load_features(a.test)
    classes = 10
    ytr = torch.arange(classes).repeat_interleave(xtr.shape[0] // classes)
    yte = torch.arange(classes).repeat_interleave(xte.shape[0] // classes)
    accs = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        torch.manual_seed(seed)
        head = torch.nn.Sequential(
            torch.nn.Linear(xtr.shape[1], 256),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(256, classes),
        )
        opt = torch.optim.SGD(head.parameters(), lr=a.lr, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        for _ in range(a.epochs):
            head.train()
            for idx in torch.randperm(xtr.shape[0]).split(a.batch_size):
                opt.zero_grad()
                loss_fn(head(xtr[idx]), ytr[idx]).backward()
                opt.step()
        head.eval()
        with torch.no_grad():
            acc = (head(xte).argmax(1) == yte).float().mean().item()
        accs.append(acc)
        print(f"seed {seed}: test accuracy {acc:.4f}")
    print(f"mean over {len(accs)} seeds: {sum(accs) / len(accs):.4f}")


if __name__ == "__main__":
    main()
