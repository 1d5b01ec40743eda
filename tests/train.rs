//! Training features beyond the main job, on real weights (made by `make setup`): feature cache,
//! determinism, resume after an interruption, the CIFAR-10 binary reader, evaluate and sweep.
#![cfg(feature = "train")]

mod common;

use common::{ok, pipe, root, s, weights, write_binary_release};
use serde_json::Value;
use std::process::{Command, Output};

#[test]
fn binary_release_cache_determinism_resume_evaluate_and_sweep() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar-10-batches-bin");
    write_binary_release(&data, 40);
    let runs = tmp.path().join("runs");
    let cache = tmp.path().join("cache");
    let train = |name: &str, extra: &[&str]| -> Output {
        let mut args = vec![
            "train",
            "--data",
            s(&data),
            "--weights",
            &w,
            "--train-limit",
            "150",
            "--test-limit",
            "40",
            "--epochs",
            "4",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--runs-dir",
            s(&runs),
            "--cache-dir",
            s(&cache),
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        pipe(&args)
    };

    // First run extracts features from the binary release; the second reuses them from the cache.
    let a = train("a", &[]);
    assert!(a.status.success());
    assert!(String::from_utf8_lossy(&a.stderr).contains("190 images through the frozen base"));
    let b = train("b", &[]);
    assert!(b.status.success());
    assert!(String::from_utf8_lossy(&b.stderr).contains("all 190 images from the feature cache"));
    // Same seed, same device: identical history and head weights.
    let read = |run: &str, f: &str| std::fs::read(runs.join(run).join(f)).unwrap();
    assert_eq!(read("a", "history.json"), read("b", "history.json"));
    assert_eq!(read("a", "head.safetensors"), read("b", "head.safetensors"));
    let preds: Value = serde_json::from_slice(&read("a", "predictions.json")).unwrap();
    assert_eq!(preds["items"].as_array().unwrap().len(), 40);
    assert_eq!(preds["items"][0]["file"], "test_batch.bin#0");
    assert_eq!(
        preds["items"][1]["file"], "test_batch.bin#1",
        "all 40 test records, in file order"
    );
    // Another seed gives another history (the seed is really used).
    let c = train("c", &["--seed", "7"]);
    assert!(c.status.success());
    assert_ne!(read("a", "history.json"), read("c", "history.json"));

    // Interrupted after epoch 2, resumed: the same final result as the uninterrupted run "a".
    let i = train("interrupted", &["--interrupt-after-epoch", "2"]);
    assert_eq!(i.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&i.stderr).contains("--resume"));
    assert!(runs.join("interrupted/checkpoint.safetensors").is_file());
    assert!(!runs.join("interrupted/head.safetensors").exists());
    let export = pipe(&[
        "export",
        s(&tmp.path().join("x.onnx")),
        "--run",
        "interrupted",
        "--runs-dir",
        s(&runs),
    ]);
    assert_eq!(
        export.status.code(),
        Some(1),
        "an unfinished run is not exported"
    );
    assert!(String::from_utf8_lossy(&export.stderr).contains("unfinished run"));
    assert!(!tmp.path().join("x.onnx").exists());
    let (_, err) = ok(&[
        "train",
        "--resume",
        "--runs-dir",
        s(&runs),
        "--cache-dir",
        s(&cache),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("continuing after epoch 2 of 4"), "{err}");
    assert_eq!(
        read("a", "history.json"),
        read("interrupted", "history.json")
    );
    assert_eq!(
        read("a", "head.safetensors"),
        read("interrupted", "head.safetensors")
    );
    assert_eq!(
        read("a", "predictions.json"),
        read("interrupted", "predictions.json")
    );

    // evaluate recomputes the run's test metrics from the cache and the saved head.
    let history: Value = serde_json::from_slice(&read("a", "history.json")).unwrap();
    let final_acc = history.as_array().unwrap().last().unwrap()["val_accuracy"]
        .as_f64()
        .unwrap();
    let (out, _) = ok(&[
        "evaluate",
        "--run",
        "a",
        "--runs-dir",
        s(&runs),
        "--cache-dir",
        s(&cache),
        "--device",
        "cpu",
        "--format",
        "json",
    ]);
    let ev: Value = serde_json::from_str(&out).unwrap();
    assert!((ev["report"]["accuracy"].as_f64().unwrap() - final_acc).abs() < 1e-6);
    let confusion = ev["report"]["confusion"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 40);
    let (text, _) = ok(&[
        "evaluate",
        "--run",
        "a",
        "--runs-dir",
        s(&runs),
        "--cache-dir",
        s(&cache),
        "--device",
        "cpu",
    ]);
    assert!(
        text.contains("precision") && text.contains("confusion matrix"),
        "{text}"
    );
    // The run's figures: curves, prediction grid (10 test images, 2x5), confusion matrix (redrawn by
    // evaluate).
    for (png, w, h) in [
        ("accuracy.png", 800, 500),
        ("loss.png", 800, 500),
        ("predictions.png", 950, 450),
    ] {
        let img = image::open(runs.join("a").join(png)).unwrap();
        assert_eq!((img.width(), img.height()), (w, h), "{png}");
    }
    let confusion_png = image::open(runs.join("a/confusion.png")).unwrap();
    assert!(confusion_png.width() > 400 && confusion_png.height() > 400);

    // Export verifies the model against tch's probabilities on the run's test images (here records of
    // the binary release); when they disagree, the export fails and leaves no file.
    let onnx = tmp.path().join("a.onnx");
    let (out, _) = ok(&[
        "export",
        s(&onnx),
        "--run",
        "a",
        "--runs-dir",
        s(&runs),
        "--logits",
    ]);
    assert!(
        out.contains("verified with tract on 40 test images"),
        "{out}"
    );
    assert!(onnx.is_file());
    // The text format has no header, so infer says that a --logits model's numbers are logits.
    let img = tmp.path().join("one.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([200, 30, 30]))
        .save(&img)
        .unwrap();
    let (out, err) = ok(&["infer", "--backend", "tract", "--model", s(&onnx), s(&img)]);
    assert!(
        err.contains("outputs logits (exported with --logits)"),
        "{err}"
    );
    assert!(out.starts_with(s(&img)), "{out}");
    let mut preds: Value = serde_json::from_slice(&read("a", "predictions.json")).unwrap();
    let probs = preds["items"][0]["probabilities"].as_array_mut().unwrap();
    probs.reverse(); // another class becomes the most probable
    std::fs::write(
        runs.join("a/predictions.json"),
        serde_json::to_vec(&preds).unwrap(),
    )
    .unwrap();
    let bad = tmp.path().join("bad.onnx");
    let out = pipe(&["export", s(&bad), "--run", "a", "--runs-dir", s(&runs)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("verification failed"));
    assert!(
        !bad.exists(),
        "a model that fails verification is not left behind"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
            .count(),
        0
    );

    // A sweep of 2 batch sizes x 2 learning rates from the cache: no extraction.
    let out_dir = tmp.path().join("sweep");
    let (table, _) = ok(&[
        "sweep",
        "--data",
        s(&data),
        "--weights",
        &w,
        "--train-limit",
        "150",
        "--test-limit",
        "40",
        "--epochs",
        "3",
        "--batch-sizes",
        "16,32",
        "--lrs",
        "1e-4,1e-5",
        "--device",
        "cpu",
        "--cache-dir",
        s(&cache),
        "--out",
        s(&out_dir),
    ]);
    assert!(table.contains("(0 images extracted)"), "{table}");
    let sweep: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("sweep.json")).unwrap()).unwrap();
    let settings = sweep["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 4);
    let sweep_png = image::open(out_dir.join("sweep.png")).unwrap();
    assert_eq!((sweep_png.width(), sweep_png.height()), (900, 560));
    for st in settings {
        assert_eq!(st["history"].as_array().unwrap().len(), 3);
        let best = st["best_val_accuracy"].as_f64().unwrap();
        assert!(best >= st["final_val_accuracy"].as_f64().unwrap());
    }
    // The batch-16, lr 1e-4 setting trains exactly like `pipe train` with those settings.
    let (_, _) = ok(&[
        "train",
        "--data",
        s(&data),
        "--weights",
        &w,
        "--train-limit",
        "150",
        "--test-limit",
        "40",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--runs-dir",
        s(&runs),
        "--cache-dir",
        s(&cache),
        "--name",
        "three",
    ]);
    let h3: Value = serde_json::from_slice(&read("three", "history.json")).unwrap();
    assert_eq!(settings[0]["history"], h3);
}

#[test]
fn input_size_64_trains_exports_and_verifies() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bin");
    write_binary_release(&data, 20);
    let runs = tmp.path().join("runs");
    ok(&[
        "train",
        "--data",
        s(&data),
        "--weights",
        &w,
        "--train-limit",
        "60",
        "--test-limit",
        "20",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--input-size",
        "64",
        "--device",
        "cpu",
        "--runs-dir",
        s(&runs),
        "--no-cache",
        "--name",
        "big",
    ]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(runs.join("big/config.json")).unwrap()).unwrap();
    assert_eq!(config["input_size"], 64);
    let head = std::fs::read(runs.join("big/head.safetensors")).unwrap();
    assert!(
        String::from_utf8_lossy(&head[..400]).contains("[256,2048]"),
        "dense1 takes 2,048 features at 64x64"
    );
    let onnx = tmp.path().join("big.onnx");
    let (out, _) = ok(&["export", s(&onnx), "--run", "big", "--runs-dir", s(&runs)]);
    assert!(
        out.contains("verified with tract on 20 test images"),
        "{out}"
    );
    let (inspect, _) = ok(&["inspect", s(&onnx)]);
    assert!(inspect.contains("[N, 64, 64, 3]"), "{inspect}");
    let python = root().join(".venv/bin/python");
    let check = Command::new(python)
        .args([
            "-c",
            "import sys, onnx; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)",
            s(&onnx),
        ])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let bad = pipe(&[
        "train",
        "--data",
        s(&data),
        "--weights",
        &w,
        "--input-size",
        "48",
        "--runs-dir",
        s(&runs),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("multiple of 32"));
}

#[test]
fn diverging_training_stops_with_an_explanation() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bin");
    write_binary_release(&data, 20);
    let runs = tmp.path().join("runs");
    let out = pipe(&[
        "train",
        "--data",
        s(&data),
        "--weights",
        &w,
        "--train-limit",
        "60",
        "--test-limit",
        "20",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "1e6",
        "--device",
        "cpu",
        "--runs-dir",
        s(&runs),
        "--no-cache",
        "--name",
        "boom",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("diverged") && err.contains("--lr"), "{err}");
    assert!(!runs.join("boom/head.safetensors").exists());
    assert!(!runs.join("latest").exists());
    // It diverged in epoch 1: no checkpoint, so the run folder (only config.json) is removed and a
    // later `--resume` does not pick it up.
    assert!(err.contains("the empty run folder was removed"), "{err}");
    assert!(!runs.join("boom").exists());
}
