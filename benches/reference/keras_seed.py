"""The Keras seed job, timed on this machine in the same `make bench` run as pipe (the README
compares `pipe train` against it): an ImageNet VGG16 convolutional base, frozen, under Flatten, Dense 256 ReLU,
Dropout 0.5, Dense 10 softmax; SGD (lr 1e-4, momentum 0.9), batch 128, 3 epochs on the first 500
training images of each CIFAR-10 class, with the 1,000 test images (100 per class) as validation data
after every epoch, as the seed article plotted, then `evaluate` on them.

Same inputs as pipe: the ImageNet VGG16 conv weights from pipe's models/vgg16_imagenet.safetensors
(OIHW, converted to Keras' HWIO), the same JPEG files (pipe's class-balanced subset: the first N/10
files of each class in name order), Keras' own "caffe" preprocessing (RGB->BGR, minus the ImageNet
means). TensorFlow runs on all cores (its default); nothing is downloaded.

Runs in its own virtualenv (benches/reference/requirements-keras.txt; `make bench` creates it), so the
project's virtualenv stays free of TensorFlow. Writes JSON (seconds) to --out: `fit_evaluate_s` (the
figure the README compares, median of --runs), `fit_s`, `evaluate_s`, `load_s` (JPEG decoding, not
included) and the test accuracy of each run.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_safetensors, write_result  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_split(tf, folder, per_class):
    """(images uint8 [n, 32, 32, 3] RGB, labels int64 [n]) of the first per_class files of each
    class folder, in name order."""
    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        d = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(d) if f.lower().endswith((".jpg", ".jpeg", ".png")))
        if len(files) < per_class:
            sys.exit(f"{d}: {len(files)} images, need {per_class}")
        for f in files[:per_class]:
            img = tf.io.decode_image(tf.io.read_file(os.path.join(d, f)), channels=3).numpy()
            if img.shape != (32, 32, 3):
                sys.exit(f"{os.path.join(d, f)}: shape {img.shape}, expected 32x32x3")
            xs.append(img)
            ys.append(label)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def build(keras, weights):
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D):
            w = weights[f"base.{layer.name}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
            layer.set_weights([w, weights[f"base.{layer.name}.bias"]])
    base.trainable = False
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        base,
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-4, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="models/vgg16_imagenet.safetensors")
    p.add_argument("--data", default="data/cifar10")
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default="target/bench/keras_seed.json")
    a = p.parse_args()
    for f in (a.weights, os.path.join(a.data, "train"), os.path.join(a.data, "test")):
        if not os.path.exists(f):
            sys.exit(f"{f} not found; run `make setup`")

    import tensorflow as tf
    import keras

    weights = load_safetensors(a.weights)
    t = time.perf_counter()
    x_train, y_train = load_split(tf, os.path.join(a.data, "train"), a.train_limit // 10)
    x_test, y_test = load_split(tf, os.path.join(a.data, "test"), a.test_limit // 10)
    pre = keras.applications.vgg16.preprocess_input
    x_train, x_test = pre(x_train.astype("float32")), pre(x_test.astype("float32"))
    load_s = time.perf_counter() - t

    runs = []
    for i in range(a.runs):
        keras.utils.set_random_seed(i + 1)
        model = build(keras, weights)
        t = time.perf_counter()
        model.fit(x_train, y_train, batch_size=128, epochs=3, validation_data=(x_test, y_test),
                  verbose=0)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        _, acc = model.evaluate(x_test, y_test, batch_size=128, verbose=0)
        evaluate_s = time.perf_counter() - t
        runs.append({"fit_s": fit_s, "evaluate_s": evaluate_s, "fit_evaluate_s": fit_s + evaluate_s,
                     "test_accuracy": acc})
        print(f"Keras seed run {i + 1}/{a.runs}: fit {fit_s:.1f} s + evaluate {evaluate_s:.1f} s, "
              f"test accuracy {acc:.4f}", flush=True)
    res = {
        "fit_evaluate_s": statistics.median(r["fit_evaluate_s"] for r in runs),
        "fit_s": statistics.median(r["fit_s"] for r in runs),
        "evaluate_s": statistics.median(r["evaluate_s"] for r in runs),
        "load_s": load_s,
        "runs": runs,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    write_result(a.out, res)


if __name__ == "__main__":
    main()
