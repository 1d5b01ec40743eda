//! Head-training options beyond the seed recipe, on real weights (made by `make setup`) and a generated
//! CIFAR-10 binary release: Adam, cosine schedule, a validation split carved from the training images,
//! early stopping, best-epoch keeping, and `--resume` ending exactly like an uninterrupted run with all
//! of them on; fine-tuning the last conv layers (`--unfreeze`, `--augment`, head warm-up).
#![cfg(feature = "train")]

mod common;

use common::{ok, pipe, s, weights, write_binary_release};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Tensors of a safetensors file as (name, little-endian bytes), sorted by name.
fn tensors(p: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn adam_cosine_val_split_early_stopping_and_resume() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar-10-batches-bin");
    write_binary_release(&data, 40);
    let runs = tmp.path().join("runs");
    let cache = tmp.path().join("cache");
    let train_with = |name: &str, [lr, schedule, patience]: [&str; 3], extra: &[&str]| -> Output {
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
            "8",
            "--batch-size",
            "16",
            "--optimizer",
            "adam",
            "--lr",
            lr,
            "--schedule",
            schedule,
            "--val-split",
            "0.2",
            "--patience",
            patience,
            "--restore-best",
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
    let train =
        |name: &str, extra: &[&str]| -> Output { train_with(name, ["3e-4", "cosine", "2"], extra) };
    let a = train("a", &[]);
    assert!(a.status.success());
    let err = String::from_utf8_lossy(&a.stderr).into_owned();
    assert!(err.contains("Adam lr 0.0003"), "config echo: {err}");
    assert!(err.contains("30 of the training images held out"), "{err}");
    let dir = runs.join("a");
    let config = read_json(&dir.join("config.json"));
    assert_eq!(config["optimizer"], "adam");
    assert_eq!(config["schedule"], "cosine");
    // 150 training images, 15 per class: round(0.2 * 15) = 3 per class go to validation.
    assert_eq!(config["val_images"], 30);
    assert_eq!(config["train_images"], 120);
    assert_eq!(config["test_images"], 40);

    let history = read_json(&dir.join("history.json"));
    let h = history.as_array().unwrap();
    assert!(!h.is_empty() && h.len() <= 8);
    let val_loss: Vec<f64> = h.iter().map(|m| m["val_loss"].as_f64().unwrap()).collect();
    let (best_i, _) = val_loss
        .iter()
        .enumerate()
        .fold((0, f64::MAX), |b, (i, &v)| if v < b.1 { (i, v) } else { b });
    if h.len() < 8 {
        // Stopped early: exactly `patience` epochs after the lowest validation loss.
        assert_eq!(h.len() - 1 - best_i, 2, "{val_loss:?}");
        assert!(err.contains("early stopping after epoch"), "{err}");
    } else {
        assert!(h.len() - 1 - best_i < 2 || !err.contains("early stopping"));
    }
    // best.safetensors holds the epoch with the lowest validation loss, and with --restore-best the
    // final head is that epoch's.
    let best = std::fs::read(dir.join("best.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&best).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["epoch"], (best_i + 1).to_string());
    assert_eq!(
        tensors(&dir.join("best.safetensors")),
        tensors(&dir.join("head.safetensors"))
    );
    // Validation is not the test split: the final test metrics differ from the best epoch's
    // validation metrics in general, and predictions.json covers the 40 test images.
    let preds = read_json(&dir.join("predictions.json"));
    assert_eq!(preds["items"].as_array().unwrap().len(), 40);

    // Interrupted after epoch 2 and resumed: the same history and head as the uninterrupted run.
    let i = train("i", &["--interrupt-after-epoch", "2"]);
    assert_eq!(i.status.code(), Some(1));
    let (_, err) = ok(&[
        "train",
        "--resume",
        "--name",
        "i",
        "--runs-dir",
        s(&runs),
        "--cache-dir",
        s(&cache),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("continuing after epoch 2 of 8"), "{err}");
    for f in ["history.json", "predictions.json"] {
        assert_eq!(
            std::fs::read(runs.join("a").join(f)).unwrap(),
            std::fs::read(runs.join("i").join(f)).unwrap(),
            "{f}"
        );
    }
    for f in ["head.safetensors", "best.safetensors"] {
        assert_eq!(
            tensors(&runs.join("a").join(f)),
            tensors(&runs.join("i").join(f)),
            "{f}"
        );
    }

    // A learning rate too high for this data: the validation loss rises, and early stopping ends the
    // run `patience` epochs after its lowest point.
    let es = train_with("es", ["1e-2", "constant", "1"], &[]);
    assert!(es.status.success());
    let err = String::from_utf8_lossy(&es.stderr).into_owned();
    let h = read_json(&runs.join("es/history.json"));
    let h = h.as_array().unwrap();
    assert!(h.len() < 8, "expected an early stop: {err}");
    assert!(
        err.contains(&format!("early stopping after epoch {}", h.len())),
        "{err}"
    );
    let vl: Vec<f64> = h.iter().map(|m| m["val_loss"].as_f64().unwrap()).collect();
    let last = vl[vl.len() - 1];
    let before = vl[..vl.len() - 1].iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        last >= before,
        "stopped after a non-improving epoch: {vl:?}"
    );

    // The export of such a run verifies like any other.
    let onnx = tmp.path().join("a.onnx");
    let (out, _) = ok(&["export", s(&onnx), "--run", "a", "--runs-dir", s(&runs)]);
    assert!(out.contains("verified with tract"), "{out}");
    // float16 weights: about half the file, verified within the looser stated tolerance.
    let half = tmp.path().join("a16.onnx");
    let (out, _) = ok(&[
        "export",
        s(&half),
        "--run",
        "a",
        "--runs-dir",
        s(&runs),
        "--fp16",
    ]);
    assert!(out.contains("(tolerance 1e-2)"), "{out}");
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&half) * 100 < size(&onnx) * 51,
        "{} vs {}",
        size(&half),
        size(&onnx)
    );
    let (out, _) = ok(&["inspect", s(&half)]);
    assert!(out.contains("float16"), "{out}");
}

#[test]
fn bad_training_options_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    for (args, needle) in [
        (vec!["--val-split", "1.5"], "--val-split"),
        (vec!["--val-split=-0.1"], "--val-split"),
        (vec!["--patience", "0"], "--patience"),
        (vec!["--optimizer", "rmsprop"], "invalid value 'rmsprop'"),
        (vec!["--schedule", "linear"], "invalid value 'linear'"),
    ] {
        let mut all = vec!["train", "--runs-dir", s(&runs)];
        all.extend(args.iter().copied());
        let out = pipe(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!runs.exists(), "nothing written for {args:?}");
    }
}

#[test]
fn unfreeze_fine_tunes_the_last_convs_exports_and_resumes() {
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
            "100",
            "--test-limit",
            "40",
            "--epochs",
            "2",
            "--batch-size",
            "20",
            "--unfreeze",
            "2",
            "--augment",
            "--head-epochs",
            "2",
            "--lr",
            "1e-5",
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
    let a = train("a", &[]);
    assert!(a.status.success());
    let err = String::from_utf8_lossy(&a.stderr).into_owned();
    assert!(err.contains("last 2 conv layers fine-tuned"), "{err}");
    assert!(err.contains("head warm-up: 2 epochs"), "{err}");
    let dir = runs.join("a");
    let config = read_json(&dir.join("config.json"));
    assert_eq!(config["unfreeze"], 2);
    assert_eq!(config["augment"], true);
    // --precision auto: bf16 mixed precision where the CPU has AVX512_BF16 (so the export and resume
    // checks below cover bf16 training there), float32 elsewhere; recorded and named in the first line.
    let bf16 = pipe::config::CpuBf16::detect().avx512_bf16;
    assert_eq!(config["precision"], if bf16 { "bf16" } else { "fp32" });
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains(if bf16 {
            "bf16 mixed precision (auto: "
        } else {
            "float32 (auto: "
        }),
        "{first}"
    );
    // history.json: the 2 warm-up epochs, then the 2 fine-tuning epochs, with phase and learning rate.
    let phases: Vec<(String, f64)> = read_json(&dir.join("history.json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["phase"].as_str().unwrap().to_string(),
                m["lr"].as_f64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("warm-up", 1e-3),
        ("warm-up", 1e-3),
        ("fine-tune", 1e-5),
        ("fine-tune", 1e-5),
    ];
    assert_eq!(phases.len(), want.len());
    for ((phase, lr), (p, l)) in phases.iter().zip(want) {
        assert_eq!((phase.as_str(), *lr), (p, l));
    }
    assert!(dir.join("lr.png").is_file());

    // base.safetensors holds the whole base: the two last convs changed, the others are ImageNet's.
    let tuned = tensors(&dir.join("base.safetensors"));
    let imagenet = tensors(Path::new(&w));
    assert_eq!(tuned.len(), 26);
    for (name, bytes) in &tuned {
        let original = &imagenet.iter().find(|(n, _)| n == name).unwrap().1;
        let trained = name.contains("block5_conv2") || name.contains("block5_conv3");
        assert_eq!(bytes != original, trained, "{name}");
    }

    // The export uses the tuned base and verifies against tch's predictions; evaluate agrees with the
    // last epoch's validation (= test split) accuracy.
    let onnx = tmp.path().join("a.onnx");
    let (out, _) = ok(&["export", s(&onnx), "--run", "a", "--runs-dir", s(&runs)]);
    assert!(
        out.contains("verified with tract on 40 test images"),
        "{out}"
    );
    let history = read_json(&dir.join("history.json"));
    let last = history.as_array().unwrap().last().unwrap()["val_accuracy"]
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
    assert!((ev["report"]["accuracy"].as_f64().unwrap() - last).abs() < 1e-6);

    // Interrupted after epoch 1 and resumed: identical to the uninterrupted run.
    let i = train("i", &["--interrupt-after-epoch", "1"]);
    assert_eq!(i.status.code(), Some(1));
    ok(&[
        "train",
        "--resume",
        "--name",
        "i",
        "--runs-dir",
        s(&runs),
        "--cache-dir",
        s(&cache),
        "--device",
        "cpu",
    ]);
    assert_eq!(
        std::fs::read(runs.join("a/history.json")).unwrap(),
        std::fs::read(runs.join("i/history.json")).unwrap()
    );
    for f in ["head.safetensors", "base.safetensors"] {
        assert_eq!(
            tensors(&runs.join("a").join(f)),
            tensors(&runs.join("i").join(f)),
            "{f}"
        );
    }

    // --augment without --unfreeze, and more convs than VGG16 has, are refused before any work.
    let out = pipe(&["train", "--augment", "--runs-dir", s(&runs), "--name", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--augment needs --unfreeze"));
    let out = pipe(&[
        "train",
        "--unfreeze",
        "14",
        "--runs-dir",
        s(&runs),
        "--name",
        "y",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--unfreeze must be between 0 and 13"));
    assert!(!runs.join("x").exists() && !runs.join("y").exists());
}

/// `--device cuda`: trains on the GPU and the export still verifies against tch's (GPU) probabilities.
/// Machines without CUDA (CI) skip it with the reason printed.
#[test]
fn cuda_training_when_a_gpu_is_present() {
    if !tch::Cuda::is_available() {
        eprintln!(
            "skipped: libtorch sees no CUDA device (device count {}, CUDA build {}); run on a GPU machine",
            tch::Cuda::device_count(),
            tch::utils::has_cuda()
        );
        return;
    }
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar-10-batches-bin");
    write_binary_release(&data, 40);
    let runs = tmp.path().join("runs");
    let mut results = Vec::new();
    for device in ["cpu", "cuda"] {
        let (_, err) = ok(&[
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
            device,
            "--runs-dir",
            s(&runs),
            "--no-cache",
            "--name",
            device,
        ]);
        assert!(
            err.contains(if device == "cuda" {
                "on cuda:0"
            } else {
                "on cpu"
            }),
            "{err}"
        );
        let h = read_json(&runs.join(device).join("history.json"));
        results.push(
            h.as_array().unwrap().last().unwrap()["val_accuracy"]
                .as_f64()
                .unwrap(),
        );
    }
    // Same data and seed; GPU kernels round differently, so the accuracies are close, not equal.
    assert!((results[0] - results[1]).abs() <= 0.1, "{results:?}");
    let onnx = tmp.path().join("cuda.onnx");
    let (out, _) = ok(&["export", s(&onnx), "--run", "cuda", "--runs-dir", s(&runs)]);
    assert!(out.contains("verified with tract"), "{out}");
}
