//! End to end on real CIFAR-10 images and the real ImageNet VGG16 weights (both made by `make setup`):
//! `pipe train` → `pipe export` → `pipe infer` with tract and with ONNX Runtime, checking that both
//! backends reproduce the probabilities tch computed at the end of training for every test image.
#![cfg(feature = "train")]

mod common;

use common::{ok, pipe, require_setup, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Label and probabilities per image path from `pipe infer --format json`.
fn infer_json(backend: &str, model: &Path, files: &[String]) -> Vec<(String, usize, Vec<f32>)> {
    let mut args = vec![
        "infer",
        "--backend",
        backend,
        "--format",
        "json",
        "--batch-size",
        "64",
        "--model",
        model.to_str().unwrap(),
    ];
    args.extend(files.iter().map(String::as_str));
    let doc: Value = serde_json::from_str(&ok(&args).0).expect("json output");
    doc["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| {
            let probs = p["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            (
                p["path"].as_str().unwrap().to_string(),
                p["class_index"].as_u64().unwrap() as usize,
                probs,
            )
        })
        .collect()
}

/// Validates a model with the reference `onnx.checker.check_model(full_check=True)` from the `onnx`
/// package in the project's virtualenv (installed by `make setup`).
pub fn onnx_check(model: &Path) {
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run `make setup`",
        python.display()
    );
    let out = Command::new(python)
        .args(["-c", "import sys, onnx; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True); print('onnx.checker ok')", model.to_str().unwrap()])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "onnx.checker refused {}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

#[test]
fn train_export_and_both_backends_agree_with_tch() {
    let (data, weights) = require_setup();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let (stdout, _) = ok(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--train-limit",
        "300",
        "--test-limit",
        "120",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--name",
        "e2e",
    ]);
    assert!(stdout.contains("test accuracy"), "{stdout}");
    let run = runs.join("e2e");
    assert_eq!(
        std::fs::read_link(runs.join("latest")).unwrap(),
        PathBuf::from("e2e")
    );
    let history: Value =
        serde_json::from_slice(&std::fs::read(run.join("history.json")).unwrap()).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 3);
    for e in history.as_array().unwrap() {
        let acc = e["val_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc) && e["loss"].as_f64().unwrap().is_finite());
    }
    let preds: Value =
        serde_json::from_slice(&std::fs::read(run.join("predictions.json")).unwrap()).unwrap();
    let items = preds["items"].as_array().unwrap();
    assert_eq!(items.len(), 120);
    let test_root = PathBuf::from(preds["data_root"].as_str().unwrap());
    // 12 images per class, class-balanced.
    for c in 0..10 {
        assert_eq!(
            items
                .iter()
                .filter(|i| i["label"].as_u64() == Some(c))
                .count(),
            12
        );
    }
    let tch: Vec<(String, Vec<f32>)> = items
        .iter()
        .map(|i| {
            let path = test_root
                .join(i["file"].as_str().unwrap())
                .to_str()
                .unwrap()
                .to_string();
            (
                path,
                i["probabilities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect(),
            )
        })
        .collect();
    // The head learned something real from ImageNet features: well above 10% chance on 120 images.
    let correct = items
        .iter()
        .zip(&tch)
        .filter(|(i, (_, p))| argmax(p) as u64 == i["label"].as_u64().unwrap())
        .count();
    assert!(
        correct >= 30,
        "only {correct}/120 test images right after training"
    );

    let model = tmp.path().join("onnx/model.onnx");
    let (out, _) = ok(&[
        "export",
        model.to_str().unwrap(),
        "--run",
        "e2e",
        "--runs-dir",
        runs.to_str().unwrap(),
    ]);
    assert!(out.contains("exported run e2e"), "{out}");
    assert!(
        std::fs::metadata(&model).unwrap().len() > 58_000_000,
        "weights are inside the model file"
    );

    let files: Vec<String> = tch.iter().map(|(p, _)| p.clone()).collect();
    let tract = infer_json("tract", &model, &files);
    let ort = infer_json("ort", &model, &files);
    assert_eq!(tract.len(), 120);
    assert_eq!(ort.len(), 120);
    for (backend, got) in [("tract", &tract), ("ort", &ort)] {
        let mut worst = 0f32;
        for ((path, label, probs), (tpath, tprobs)) in got.iter().zip(&tch) {
            assert_eq!(path, tpath);
            assert_eq!(
                *label,
                argmax(tprobs),
                "{backend}: {path} label differs from tch"
            );
            for (a, b) in probs.iter().zip(tprobs) {
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("{backend}: max |Δp| vs tch = {worst:e}");
        assert!(
            worst <= 1e-4,
            "{backend}: max |Δprobability| {worst} > 1e-4"
        );
    }
    for (a, b) in tract.iter().zip(&ort) {
        assert_eq!(a.1, b.1, "tract and ort disagree on {}", a.0);
    }

    // Output formats: csv with top-3 written atomically to a file; its first label is the json label.
    let csv_path = tmp.path().join("out/preds.csv");
    std::fs::create_dir_all(csv_path.parent().unwrap()).unwrap();
    let mut args = vec![
        "infer",
        "--format",
        "csv",
        "--top-k",
        "3",
        "-o",
        csv_path.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ];
    args.extend(files[..5].iter().map(String::as_str));
    let (printed, _) = ok(&args);
    assert!(
        printed.is_empty(),
        "with --output nothing goes to stdout: {printed}"
    );
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "path,label,probability,label_2,probability_2,label_3,probability_3"
    );
    assert_eq!(lines.len(), 6);
    for (line, (path, label, probs)) in lines[1..].iter().zip(&tract) {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols[0], path);
        assert_eq!(cols[1], pipe::arch::CIFAR10_CLASSES[*label]);
        let p1: f32 = cols[2].parse().unwrap();
        let p2: f32 = cols[4].parse().unwrap();
        assert!((p1 - probs[*label]).abs() < 1e-5 && p1 >= p2, "{line}");
    }

    // The libtorch-free build (`make infer-only`, run by `make test`) links no libtorch and gives the
    // same labels as the full build.
    match std::env::var("PIPE_INFER_ONLY_BIN") {
        Err(_) => eprintln!(
            "SKIPPED libtorch-free build check: PIPE_INFER_ONLY_BIN is not set (make test sets it)"
        ),
        Ok(bin) => {
            let elf = Command::new("readelf")
                .args(["-d", &bin])
                .output()
                .expect("readelf");
            let needed = String::from_utf8_lossy(&elf.stdout);
            assert!(needed.contains("NEEDED"), "{needed}");
            assert!(
                !needed.contains("torch") && !needed.contains("c10"),
                "{bin} links libtorch:\n{needed}"
            );
            for backend in ["tract", "ort"] {
                let mut args = vec![
                    "infer",
                    "--backend",
                    backend,
                    "--format",
                    "json",
                    "--model",
                    model.to_str().unwrap(),
                ];
                args.extend(files.iter().map(String::as_str));
                let out = Command::new(&bin)
                    .args(&args)
                    .current_dir(root())
                    .output()
                    .expect("run pipe-infer");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
                let labels: Vec<u64> = doc["predictions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["class_index"].as_u64().unwrap())
                    .collect();
                let full: Vec<u64> = tract.iter().map(|t| t.1 as u64).collect();
                assert_eq!(
                    labels, full,
                    "{backend}: libtorch-free build labels differ from the full build"
                );
            }
        }
    }
}

#[test]
fn weights_import_refuses_a_wrong_fingerprint() {
    use prost::Message;
    use tract_onnx::pb;
    // A well-formed ONNX with 13 VGG16-shaped Conv nodes whose values are not the ImageNet weights.
    let arch = pipe::arch::Arch::vgg16_transfer(32, 10);
    let mut graph = pb::GraphProto::default();
    for (i, pair) in arch.base_params().chunks(2).enumerate() {
        let mut names = Vec::new();
        for (name, shape) in pair {
            let n: usize = shape.iter().product();
            graph.initializer.push(pb::TensorProto {
                name: name.clone(),
                dims: shape.iter().map(|&d| d as i64).collect(),
                data_type: 1,
                float_data: vec![0.01; n],
                ..Default::default()
            });
            names.push(name.clone());
        }
        graph.node.push(pb::NodeProto {
            op_type: "Conv".into(),
            input: vec![format!("x{i}"), names[0].clone(), names[1].clone()],
            output: vec![format!("x{}", i + 1)],
            ..Default::default()
        });
    }
    let tmp = tempfile::tempdir().unwrap();
    let onnx = tmp.path().join("not_imagenet.onnx");
    std::fs::write(
        &onnx,
        pb::ModelProto {
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec(),
    )
    .unwrap();
    let out_file = tmp.path().join("w.safetensors");
    let out = pipe(&[
        "weights",
        "import",
        onnx.to_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not_imagenet.onnx")
            && err.contains("fingerprint")
            && err.contains("--allow-unverified"),
        "{err}"
    );
    assert!(!out_file.exists(), "nothing written on refusal");

    // With --allow-unverified it imports; training with it is then refused unless allowed again.
    let out = pipe(&[
        "weights",
        "import",
        onnx.to_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
        "--allow-unverified",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("UNVERIFIED"));
    let (data, _) = require_setup();
    let out = pipe(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--weights",
        out_file.to_str().unwrap(),
        "--runs-dir",
        tmp.path().join("runs").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("w.safetensors") && err.contains("fingerprint"),
        "{err}"
    );
    assert!(!tmp.path().join("runs/latest").exists());
}

/// The whole CIFAR-10 test set (10,000 images): a run evaluated on all of them, exported, then
/// classified from the image files by tract and by ONNX Runtime. Both backends give every image the
/// same label as each other and as tch, and stay within 1e-4 of tch's probabilities.
#[test]
fn full_test_set_tract_and_ort_agree_with_tch() {
    let (data, weights) = require_setup();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    ok(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--train-limit",
        "500",
        "--test-limit",
        "0",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--cache-dir",
        tmp.path().join("cache").to_str().unwrap(),
        "--name",
        "full",
    ]);
    let preds: Value =
        serde_json::from_slice(&std::fs::read(runs.join("full/predictions.json")).unwrap())
            .unwrap();
    let root_dir = PathBuf::from(preds["data_root"].as_str().unwrap());
    let tch: std::collections::HashMap<PathBuf, Vec<f32>> = preds["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| {
            let p = it["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            (root_dir.join(it["file"].as_str().unwrap()), p)
        })
        .collect();
    assert_eq!(tch.len(), 10_000);
    let model = tmp.path().join("full.onnx");
    ok(&[
        "export",
        model.to_str().unwrap(),
        "--run",
        "full",
        "--runs-dir",
        runs.to_str().unwrap(),
    ]);
    let test_dir = data.join("test").to_str().unwrap().to_string();
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0
    };
    let mut labels: Vec<Vec<(String, usize)>> = Vec::new();
    for backend in ["tract", "ort"] {
        let out = infer_json(backend, &model, std::slice::from_ref(&test_dir));
        assert_eq!(out.len(), 10_000, "{backend}");
        let mut worst = 0f32;
        for (path, label, probs) in &out {
            let want = tch
                .get(&PathBuf::from(path))
                .unwrap_or_else(|| panic!("{path} not in predictions.json"));
            assert_eq!(*label, argmax(want), "{backend}: {path}");
            for (a, b) in probs.iter().zip(want) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst <= 1e-4, "{backend}: max |Δp| {worst:e}");
        eprintln!("{backend}: 10,000 images, same labels as tch, max |Δp| {worst:e}");
        let mut l: Vec<(String, usize)> = out.into_iter().map(|(p, l, _)| (p, l)).collect();
        l.sort();
        labels.push(l);
    }
    assert_eq!(labels[0], labels[1], "tract and ort labels differ");
}

/// `infer --backend ort --device cuda` (the CUDA execution provider of the onnxruntime-gpu wheel that
/// `make setup` installs on machines with an NVIDIA driver) gives the CPU's labels and probabilities
/// within 1e-4. Machines without an NVIDIA driver (CI) skip it with the reason printed.
#[test]
fn ort_cuda_matches_cpu_when_a_gpu_is_present() {
    if !Path::new("/proc/driver/nvidia/version").exists() {
        eprintln!("skipped: no NVIDIA driver (/proc/driver/nvidia/version is absent); run on a GPU machine");
        return;
    }
    let (data, weights) = require_setup();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    ok(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--train-limit",
        "200",
        "--test-limit",
        "50",
        "--epochs",
        "1",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--no-cache",
        "--name",
        "gpu",
    ]);
    let model = tmp.path().join("gpu.onnx");
    ok(&[
        "export",
        model.to_str().unwrap(),
        "--run",
        "gpu",
        "--runs-dir",
        runs.to_str().unwrap(),
    ]);
    let dir = data.join("test/cat").to_str().unwrap().to_string();
    let run = |device: &str| -> Vec<(String, usize, Vec<f32>)> {
        let (out, err) = ok(&[
            "infer",
            "--backend",
            "ort",
            "--device",
            device,
            "--format",
            "json",
            "--model",
            model.to_str().unwrap(),
            &dir,
        ]);
        eprintln!("{err}");
        let doc: Value = serde_json::from_str(&out).unwrap();
        doc["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["path"].as_str().unwrap().to_string(),
                    p["class_index"].as_u64().unwrap() as usize,
                    p["probabilities"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap() as f32)
                        .collect(),
                )
            })
            .collect()
    };
    let (cpu, gpu) = (run("cpu"), run("cuda"));
    assert_eq!(cpu.len(), gpu.len());
    for (c, g) in cpu.iter().zip(&gpu) {
        assert_eq!((&c.0, c.1), (&g.0, g.1));
        for (a, b) in c.2.iter().zip(&g.2) {
            assert!((a - b).abs() <= 1e-4, "{}: {a} vs {b}", c.0);
        }
    }
}
