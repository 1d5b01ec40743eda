//! The exported model as other tools see it, on runs trained in seconds (generated data, the real
//! ImageNet VGG16 weights of `make setup`): the reference `onnx.checker.check_model(full_check=True)`
//! at opsets 13, 17 and 21 and input sizes 32 and 64, the graph's input and output, `metadata_props`,
//! the Triton model repository, and the verification against tch that decides whether a file is
//! written at all.
#![cfg(feature = "train")]

mod common;

use common::onnx::{onnx_check, pbtxt_fields, OnnxModel, ValueInfo};
use common::{
    argmax, assert_contains, assert_verified, image_folders, png, s, tmp_files, Pipe, Workdir,
};
use serde_json::Value;
use std::path::Path;

/// Trains run `name` on `w.data` in seconds: 60 training and 20 test images, 2 epochs.
fn small_run(w: &Workdir, name: &str) {
    w.train(name).limits(60, 20).epochs(2).batch(16).ok();
}

/// Asserts the graph's interface: one input `images` float32 [N,size,size,3] with a symbolic batch
/// dimension, one output `output` float32 [N,classes].
fn assert_interface(m: &OnnxModel, size: usize, output: &str, classes: usize) {
    let [ValueInfo {
        name,
        elem_type,
        dims,
    }] = m.inputs.as_slice()
    else {
        panic!("one input expected: {:?}", m.inputs);
    };
    assert_eq!((name.as_str(), elem_type.as_str()), ("images", "FLOAT"));
    let s = size.to_string();
    assert!(dims[0].parse::<u64>().is_err(), "dynamic batch: {dims:?}");
    assert_eq!(dims[1..], [s.clone(), s, "3".to_string()]);
    let [out] = m.outputs.as_slice() else {
        panic!("one output expected: {:?}", m.outputs);
    };
    assert_eq!(
        (out.name.as_str(), out.elem_type.as_str()),
        (output, "FLOAT")
    );
    assert_eq!(out.dims[0], dims[0], "the batch dimension is the input's");
    assert_eq!(out.dims[1], classes.to_string());
}

/// Weights of the VGG16 conv base (13 convs).
const VGG16_BASE_PARAMETERS: u64 = 14_714_688;

/// Asserts that the weights are float32: more FLOAT elements than the conv base has, no FLOAT16.
fn assert_float32_weights(m: &OnnxModel) {
    let e = &m.initializer_elements;
    assert!(
        e["FLOAT"] > VGG16_BASE_PARAMETERS && !e.contains_key("FLOAT16"),
        "{e:?}"
    );
}

#[test]
fn exports_pass_the_onnx_checker_at_opsets_13_17_and_21() {
    let w = Workdir::binary_release(20);
    small_run(&w, "r");
    // Opset → the IR version of ONNX's versioning table.
    let cases = [(13, 7), (17, 8), (21, 10)];
    let models: Vec<_> = cases
        .iter()
        .map(|(opset, _)| w.join(format!("opset{opset}.onnx")))
        .collect();
    for ((opset, _), model) in cases.iter().zip(&models) {
        let out = w.export("r", model).arg("--opset", opset.to_string()).ok();
        assert_verified(&out.stdout, 20);
        assert!(
            out.stdout.contains(&format!("opset {opset})")),
            "{}",
            out.stdout
        );
    }
    let paths: Vec<&Path> = models.iter().map(|p| p.as_path()).collect();
    for ((opset, ir), m) in cases.iter().zip(onnx_check(&paths)) {
        assert_eq!(m.opset.get("ai.onnx"), Some(opset), "{:?}", m.opset);
        assert_eq!(m.ir_version, *ir, "opset {opset}");
        assert_interface(&m, 32, "probabilities", 10);
        assert_float32_weights(&m);
    }
    // Outside 13..=21: refused before anything is written.
    for opset in ["12", "22"] {
        let model = w.join("unsupported.onnx");
        let err = w.export("r", &model).arg("--opset", opset).fails();
        assert!(
            err.contains(&format!("opset {opset} is not supported (13..=21)")),
            "{err}"
        );
        assert!(!model.exists() && tmp_files(w.path()).is_empty());
    }
}

#[test]
fn input_size_64_trains_exports_and_verifies() {
    let w = Workdir::binary_release(20);
    w.train("big")
        .limits(60, 20)
        .epochs(2)
        .batch(16)
        .arg("--input-size", "64")
        .no_cache()
        .ok();
    let run = w.run("big");
    assert_eq!(run.config()["input_size"], 64);
    run.assert_head_takes(2048);
    let onnx = w.join("big.onnx");
    w.export_verified("big", &onnx, 20);
    let inspect = Pipe::inspect(&onnx).ok().stdout;
    assert!(inspect.contains("[N, 64, 64, 3]"), "{inspect}");
    let [m] = onnx_check(&[&onnx]).try_into().unwrap();
    assert_interface(&m, 64, "probabilities", 10);
    assert_eq!(m.metadata["input_size"], "64");
    let err = w.train("odd").arg("--input-size", "48").fails();
    assert!(err.contains("multiple of 32"), "{err}");
}

/// Trains run `name` for `epochs` on image folders with three classes of our own naming (8 training
/// and 4 test images each), so that class names and their order come from the data, not from
/// CIFAR-10; returns the classes in the order pipe gives them (sorted).
fn three_class_run(w: &Workdir, name: &str, epochs: usize) -> [&'static str; 3] {
    let classes = ["zebra", "cat", "dog"];
    image_folders(&w.data, "train", &classes, 8);
    image_folders(&w.data, "test", &classes, 4);
    w.train(name).limits(0, 0).epochs(epochs).batch(8).ok();
    ["cat", "dog", "zebra"]
}

#[test]
fn metadata_props_describe_the_run_the_input_and_the_preprocessing() {
    let w = Workdir::new();
    let classes = three_class_run(&w, "meta", 2);
    let run = w.run("meta");
    let config = run.config();
    let model = w.join("meta.onnx");
    let logits = w.join("logits.onnx");
    let half = w.join("half.onnx");
    w.export("meta", &model).ok();
    w.export("meta", &logits).flag("--logits").ok();
    w.export("meta", &half).flag("--fp16").ok();
    let [m, l, h] = onnx_check(&[&model, &logits, &half]).try_into().unwrap();
    assert_eq!(m.opset.get("ai.onnx"), Some(&17), "the default opset");
    assert_interface(&m, 32, "probabilities", 3);
    assert_interface(&l, 32, "logits", 3);
    assert_interface(&h, 32, "probabilities", 3);
    let class_json = serde_json::to_string(&classes).unwrap();
    assert_eq!(config["classes"], serde_json::json!(classes), "sorted");
    let history = run.history();
    let want = [
        ("classes", class_json.as_str()),
        ("input_name", "images"),
        ("input_layout", "NHWC"),
        ("input_color", "RGB"),
        ("input_range", "0..255 float32"),
        ("input_size", "32"),
        ("resize", "squash"),
        (
            "resize_filter",
            "bilinear (image crate FilterType::Triangle)",
        ),
        (
            "preprocessing",
            "caffe: RGB->BGR, subtract ImageNet BGR means [103.939, 116.779, 123.68], no scaling \
             (inside the graph)",
        ),
        ("pooling", "flatten"),
        ("output", "softmax probabilities"),
        (
            "weights_fingerprint",
            config["weights_fingerprint"].as_str().unwrap(),
        ),
        ("fine_tuned_conv_layers", "0"),
        ("run", "meta"),
        ("weights_dtype", "float32"),
        ("precision", "float32"),
        ("pipe_version", env!("CARGO_PKG_VERSION")),
        (
            "test_accuracy",
            &format!("{:.4}", history.last().unwrap().val_accuracy),
        ),
    ];
    let got: Vec<(&str, &str)> = m
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut sorted = want.to_vec();
    sorted.sort();
    assert_eq!(got, sorted);
    assert_eq!(
        config["weights_fingerprint"],
        "dd21191fd3ba4d9b2b0104621c806227994d029acdf7f88d3ca0afd5774c15cf",
        "the ImageNet VGG16 weights"
    );
    assert_eq!(
        config["preprocessing"],
        want[8].1.replace(" (inside the graph)", "")
    );
    // Only the output and the weights' type change with --logits and --fp16.
    assert_eq!(l.metadata["output"], "logits");
    assert_eq!(h.metadata["weights_dtype"], "float16");
    assert_float32_weights(&m);
    // float16 weights: all but a few constants (ImageNet means, shapes) are FLOAT16.
    let e = &h.initializer_elements;
    assert!(e["FLOAT16"] > VGG16_BASE_PARAMETERS, "{e:?}");
    assert!(e.get("FLOAT").copied().unwrap_or(0) < 100, "{e:?}");
    for (k, v) in &m.metadata {
        if k != "output" {
            assert_eq!(&l.metadata[k], v, "{k}");
        }
        if k != "weights_dtype" {
            assert_eq!(&h.metadata[k], v, "{k}");
        }
    }
    // `pipe inspect` prints the same metadata, in the file's order.
    let inspect = Pipe::inspect(&model).ok().stdout;
    let printed: Vec<&str> = inspect
        .lines()
        .skip_while(|l| *l != "metadata:")
        .skip(1)
        .collect();
    let expected: Vec<String> = want.iter().map(|(k, v)| format!("  {k}: {v}")).collect();
    assert_eq!(printed, expected);
    // And infer labels images with the model's class names.
    let img = w.join("x.png");
    png(&img, 32, 32, |_, _| [10, 20, 30]);
    let r = Pipe::infer(&model).path(&img).infer_json();
    assert_eq!(r.classes, classes);
    assert_eq!(
        r.predictions[0].label,
        classes[r.predictions[0].class_index]
    );
    crop_policy_round_trips(&w, &run.dir);
}

/// A run whose config says `"resize": "crop"` exports a model whose metadata says so, `pipe inspect`
/// shows it, and `pipe infer` applies it: a 64x32 image classifies exactly as its centre 32x32
/// square.
fn crop_policy_round_trips(w: &Workdir, run_dir: &Path) {
    let config_file = run_dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_file).unwrap()).unwrap();
    config["resize"] = "crop".into();
    std::fs::write(&config_file, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let model = w.join("crop.onnx");
    w.export("meta", &model).ok();
    let [m] = onnx_check(&[&model]).try_into().unwrap();
    assert_eq!(m.metadata["resize"], "crop");
    let inspect = Pipe::inspect(&model).ok().stdout;
    assert!(
        inspect.contains("resize:     crop (shorter side to 32"),
        "{inspect}"
    );
    let colour = |x: u32, y: u32| [(x * 4) as u8, (y * 8) as u8, ((x + y) * 3) as u8];
    let wide = w.join("wide.png");
    png(&wide, 64, 32, colour);
    let centre = w.join("centre.png");
    png(&centre, 32, 32, |x, y| colour(x + 16, y));
    let r = Pipe::infer(&model).path(&wide).path(&centre).infer_json();
    let [a, b] = [
        &r.predictions[0].probabilities,
        &r.predictions[1].probabilities,
    ];
    for (x, y) in a.iter().zip(b.iter()) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

/// The `test_accuracy` in the metadata is the run's accuracy on its test images, also when a
/// validation split chose the epochs. Here the test images have the colours of another class than
/// their folder's, so the test accuracy is near 0 while validation (from the training images) is near
/// 1; the metadata today holds the last epoch's validation accuracy.
#[test]
fn metadata_test_accuracy_is_the_test_accuracy_with_a_validation_split() {
    let w = Workdir::new();
    image_folders(&w.data, "train", &["cat", "dog", "zebra"], 8);
    image_folders(&w.data, "test", &["dog", "zebra", "cat"], 4);
    w.train("v")
        .limits(0, 0)
        .epochs(10)
        .batch(4)
        .arg("--val-split", "0.25")
        .ok();
    let run = w.run("v");
    let (preds, history) = (run.predictions(), run.history());
    assert!(
        (history.last().unwrap().val_accuracy - preds.accuracy()).abs() > 0.5,
        "validation and test accuracy differ here: {history:?}"
    );
    let model = w.join("v.onnx");
    w.export("v", &model).ok();
    let [m] = onnx_check(&[&model]).try_into().unwrap();
    assert_eq!(
        m.metadata["test_accuracy"],
        format!("{:.4}", preds.accuracy())
    );
}

#[test]
fn triton_repository_layout_config_and_labels() {
    let w = Workdir::new();
    let classes = three_class_run(&w, "t", 1);
    let repo = w.join("triton");
    // An ONNX file and a Triton repository in one command: refused before any work.
    let unused = w.join("model.onnx");
    let err = w.export("t", &unused).arg("--triton", &repo).fails_with(2);
    assert_contains(&err, &["cannot be used with", "--triton"]);
    assert!(!unused.exists() && !repo.exists());
    let out = Pipe::new("export")
        .run("t")
        .runs(&w.runs)
        .arg("--triton", &repo)
        .ok();
    let dir = repo.join("pipe_vgg16");
    assert!(
        out.stdout.contains(&format!(
            "Triton model repository: {} (config.pbtxt, labels.txt, 1/model.onnx)",
            dir.display()
        )),
        "{}",
        out.stdout
    );
    let model = dir.join("1/model.onnx");
    let [m] = onnx_check(&[&model]).try_into().unwrap();
    assert_interface(&m, 32, "probabilities", 3);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["1", "config.pbtxt", "labels.txt"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("labels.txt")).unwrap(),
        classes.join("\n") + "\n",
        "one class a line, in the model's order"
    );
    let config = std::fs::read_to_string(dir.join("config.pbtxt")).unwrap();
    let fields = pbtxt_fields(&config);
    let want = [
        ("name", "\"pipe_vgg16\""),
        ("backend", "\"onnxruntime\""),
        ("max_batch_size", "256"),
        ("input.name", "\"images\""),
        ("input.data_type", "TYPE_FP32"),
        ("input.format", "FORMAT_NHWC"),
        ("input.dims", "[32, 32, 3]"),
        ("output.name", "\"probabilities\""),
        ("output.data_type", "TYPE_FP32"),
        ("output.dims", "[3]"),
        ("output.label_filename", "\"labels.txt\""),
        ("dynamic_batching.max_queue_delay_microseconds", "1000"),
        ("instance_group.count", "1"),
        ("instance_group.kind", "KIND_AUTO"),
    ];
    let got: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, want, "{config}");
    // A second export is the next version; the model's config (here given a version policy by
    // hand) and labels stay as they are.
    let edited = config + "version_policy: { all: {} }\n";
    std::fs::write(dir.join("config.pbtxt"), &edited).unwrap();
    let out = Pipe::new("export")
        .run("t")
        .runs(&w.runs)
        .arg("--triton", &repo)
        .ok();
    assert!(
        out.stdout
            .contains("(version 2; its config.pbtxt and labels.txt kept as they were"),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read(dir.join("2/model.onnx")).unwrap(),
        std::fs::read(&model).unwrap(),
        "the same run exports the same bytes"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("config.pbtxt")).unwrap(),
        edited
    );
    let err = Pipe::new("export")
        .run("t")
        .runs(&w.runs)
        .arg("--triton", &repo)
        .arg("--triton-version", "0")
        .fails();
    assert_contains(&err, &["--triton-version must be at least 1"]);
    assert!(!dir.join("0").exists() && !dir.join("3").exists());
}

#[test]
fn verification_failures_fail_the_export_and_leave_no_file() {
    let w = Workdir::binary_release(40);
    w.train("a").limits(150, 40).epochs(3).batch(16).ok();
    let run = w.run("a");
    // A --logits export verifies the softmax of its output; infer's text format says that its numbers
    // are logits (the format has no header).
    let onnx = w.join("a.onnx");
    let out = w.export("a", &onnx).flag("--logits").ok();
    assert_verified(&out.stdout, 40);
    assert!(onnx.is_file());
    let img = w.join("one.png");
    png(&img, 32, 32, |_, _| [200, 30, 30]);
    let out = Pipe::infer(&onnx).backend("tract").path(&img).ok();
    assert!(
        out.stderr
            .contains("outputs logits (exported with --logits)"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.starts_with(s(&img)), "{}", out.stdout);

    let original: Value = serde_json::from_slice(&run.bytes("predictions.json")).unwrap();
    let probs = |v: &Value| -> Vec<f32> {
        v["items"][0]["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap() as f32)
            .collect()
    };
    let p = probs(&original);
    let top = argmax(&p);
    let least = (0..p.len()).min_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
    let refused = |edit: &dyn Fn(&mut Vec<Value>), message: &str| -> String {
        let mut preds = original.clone();
        edit(preds["items"][0]["probabilities"].as_array_mut().unwrap());
        run.write_predictions(&preds);
        let bad = w.join("bad.onnx");
        let err = w.export("a", &bad).fails();
        assert!(
            err.contains("verification failed") && err.contains(message),
            "{err}"
        );
        assert!(
            !bad.exists(),
            "a model that fails verification is not left behind"
        );
        assert_eq!(tmp_files(w.path()), Vec::<String>::new());
        err
    };
    let shift = |by: f64| {
        move |row: &mut Vec<Value>| row[least] = Value::from(row[least].as_f64().unwrap() + by)
    };
    // tch's probabilities moved by 2e-3 on its least probable class: every label still agrees, but
    // |Δp| exceeds the 1e-4 tolerance.
    assert!(p[least] + 2e-3 < p[top], "the label stays: {p:?}");
    let err = refused(&shift(2e-3), "against tch exceeds 1e-4");
    assert!((max_delta(&err) - 2e-3).abs() < 1e-4, "{err}");
    // Another class becomes the most probable: the label check fails first.
    refused(&|row: &mut Vec<Value>| row.reverse(), "is classified");
    // Within the tolerance (5e-5), the export goes through and reports the difference.
    let mut preds = original.clone();
    shift(5e-5)(preds["items"][0]["probabilities"].as_array_mut().unwrap());
    run.write_predictions(&preds);
    let out = w.export("a", w.join("ok.onnx")).ok();
    let delta = max_delta(&out.stdout);
    assert!((4e-5..1e-4).contains(&delta), "{}", out.stdout);
}

/// The number after `max |Δprobability| ` in export's report or error.
fn max_delta(text: &str) -> f64 {
    let rest = text
        .split("max |Δprobability| ")
        .nth(1)
        .unwrap_or_else(|| panic!("no |Δprobability| in {text}"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// Operators an int8 export must not use: the integer-only forms (onnxruntime's CPU provider refuses
/// `ConvInteger` and `MatMulInteger` in such graphs) and the fused quantized operators that not every
/// runtime has. The QDQ form keeps float operators between QuantizeLinear and DequantizeLinear.
const INTEGER_ONLY_OPS: [&str; 5] = [
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "DynamicQuantizeLinear",
];

/// The weight bits `--reduce-range auto` must choose on this CPU: 7 on an x86-64 without int8
/// dot-product instructions (AVX512_VNNI, AVX-VNNI), where ONNX Runtime's int8 kernels saturate
/// with 8-bit weights, else 8 (read from the standard library's detection, not pipe's).
fn auto_weight_bits() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx512vnni")
            && !std::arch::is_x86_feature_detected!("avxvnni")
        {
            return "7";
        }
    }
    "8"
}

/// `pipe export MODEL --quantize int8` with a calibration of 40 training images.
fn int8_export(w: &Workdir, run: &str, model: &Path) -> Pipe {
    w.export(run, model)
        .arg("--quantize", "int8")
        .arg("--calibration-images", "40")
}

/// An int8 export of a small run: the reference checker passes it (full check); its operators are
/// the float graph's plus QuantizeLinear and DequantizeLinear, none integer-only; its weights are
/// int8 (a quarter of the float file); its metadata says how it was quantized and `inspect` shows
/// it; the same run and options give the same bytes, another calibration other bytes; a bound the
/// model cannot meet refuses it and leaves no file; and it goes into a Triton repository as a float
/// model does.
#[test]
fn int8_export_is_standard_qdq_deterministic_and_refused_past_its_bound() {
    let w = Workdir::binary_release(20);
    small_run(&w, "r");
    let (a, b, c) = (w.join("a.onnx"), w.join("b.onnx"), w.join("c.onnx"));
    let out = int8_export(&w, "r", &a).ok().stdout;
    assert!(
        out.contains("int8 verified with ort on 20 test images: accuracy "),
        "{out}"
    );
    let unverified = int8_export(&w, "r", &w.join("unverified.onnx"))
        .arg("--verify-images", "0")
        .ok()
        .stderr;
    assert!(
        unverified.contains("warning: --verify-images 0: the model is written unverified (int8 accuracy not measured")
            && !unverified.contains("verifying:"),
        "{unverified}"
    );
    // Without a terminal (as here) the long phases are announced by a line each, in order.
    let err = int8_export(&w, "r", &b).ok().stderr;
    let (calibrating, verifying) = (
        err.find("calibrating: 40 images ..."),
        err.find("verifying: 20 images ..."),
    );
    assert!(
        calibrating.is_some() && verifying.is_some() && calibrating < verifying,
        "{err}"
    );
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same bytes"
    );
    // --reduce-range on: 7-bit weights whatever the CPU; more calibration images asked for than
    // the run has training images: all 60 of them.
    let err = w
        .export("r", &c)
        .arg("--quantize", "int8")
        .arg("--calibration", "minmax")
        .arg("--reduce-range", "on")
        .arg("--calibration-images", "1000")
        .ok()
        .stderr;
    assert!(err.contains("calibrating: 60 images ..."), "{err}");
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    let float = w.join("float.onnx");
    w.export_verified("r", &float, 20);
    let [q, m, f] = onnx_check(&[&a, &c, &float]).try_into().unwrap();
    assert_interface(&q, 32, "probabilities", 10);
    let mut ops = f.op_types.clone();
    ops.retain(|o| o != "Relu");
    ops.extend(["DequantizeLinear".into(), "QuantizeLinear".into()]);
    ops.sort();
    assert_eq!(
        q.op_types, ops,
        "the float graph's operators, ReLU folded, plus QDQ"
    );
    for op in INTEGER_ONLY_OPS {
        assert!(
            !q.op_types.contains(&op.to_string()),
            "{op}: {:?}",
            q.op_types
        );
    }
    // Every conv and dense weight is int8: more INT8 elements than the conv base has, float32
    // only for scales, means and biases' scales.
    let e = &q.initializer_elements;
    assert!(e["INT8"] > VGG16_BASE_PARAMETERS, "{e:?}");
    assert!(e["FLOAT"] < 10_000, "{e:?}");
    let (qa, fa) = (
        std::fs::metadata(&a).unwrap().len(),
        std::fs::metadata(&float).unwrap().len(),
    );
    assert!(qa * 3 < fa, "int8 {qa} bytes against float {fa}");
    for (key, value) in [
        ("precision", "int8"),
        ("weights_dtype", "int8"),
        ("calibration", "percentile"),
        ("calibration_images", "40"),
        ("calibration_seed", "0"),
        ("weight_bits", auto_weight_bits()),
    ] {
        assert_eq!(
            q.metadata.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    assert_eq!(m.metadata["calibration"], "minmax");
    assert_eq!(m.metadata["calibration_images"], "60");
    assert_eq!(m.metadata["weight_bits"], "7");
    assert_eq!(f.metadata["precision"], "float32");
    // pipe infer's closing line names the precision, and for int8 whether this CPU has int8 dot
    // products (either answer starts the same way).
    let img = w.join("one.png");
    png(&img, 32, 32, |_, _| [10, 20, 30]);
    for (model, says) in [(&a, "int8 model; this CPU has"), (&float, "float32 model")] {
        let err = Pipe::infer(model).path(&img).ok().stderr;
        assert!(err.contains(says), "{says}: {err}");
    }
    // On tract, an int8 file's closing line points to ort for int8's speed; on ort it does not.
    let hint = "tract runs int8 files no faster than float32: --backend ort for int8's speed";
    for (backend, hinted) in [("tract", true), ("ort", false)] {
        let err = Pipe::infer(&a)
            .arg("--backend", backend)
            .path(&img)
            .ok()
            .stderr;
        assert_eq!(err.contains(hint), hinted, "{backend}: {err}");
    }
    assert!(!f.metadata.contains_key("calibration"));
    let inspect = Pipe::inspect(&a).ok().stdout;
    assert!(
        inspect.contains(&format!("precision:  int8 (QDQ: int8 weights per output channel, {}-bit; uint8 activations, percentile calibration on 40 training images, seed 0)", auto_weight_bits())),
        "{inspect}"
    );
    // A bound no model meets (int8 100 points more accurate than float): refused, nothing written.
    let refused = w.join("refused.onnx");
    let err = int8_export(&w, "r", &refused)
        .arg("--max-accuracy-drop", "-100")
        .fails();
    assert_contains(
        &err,
        &[
            "int8 verification failed: test accuracy",
            "a gain of at least 100.00 required, --max-accuracy-drop",
            "--calibration",
        ],
    );
    assert!(!refused.exists() && tmp_files(w.path()).is_empty(), "{err}");
    // Options that need --quantize are refused without it; float16 and int8 exclude each other.
    let err = w
        .export("r", w.join("x.onnx"))
        .arg("--calibration", "minmax")
        .fails_with(2);
    assert_contains(&err, &["--quantize"]);
    let err = int8_export(&w, "r", &w.join("y.onnx"))
        .flag("--fp16")
        .fails();
    assert_contains(&err, &["--fp16 and --quantize int8"]);
    // The Triton repository of an int8 model, and its calibration pixels saved: 40 images of 32x32x3
    // bytes, each one of the run's training images as pipe decodes it.
    let repo = w.join("triton");
    let saved = w.join("calibration.u8");
    Pipe::new("export")
        .run("r")
        .runs(&w.runs)
        .arg("--triton", &repo)
        .arg("--quantize", "int8")
        .arg("--calibration-images", "40")
        .arg("--save-calibration", &saved)
        .ok();
    let model = repo.join("pipe_vgg16/1/model.onnx");
    assert_eq!(std::fs::read(&model).unwrap(), std::fs::read(&a).unwrap());
    assert!(repo.join("pipe_vgg16/config.pbtxt").is_file());
    // A refused export into a repository leaves no version folder (a server polling it would find
    // one without its model.onnx) and no hidden staging folder: for a new model and a new version.
    let entries = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let fresh = w.join("triton-refused");
    std::fs::create_dir(&fresh).unwrap();
    for target in [&fresh, &repo] {
        Pipe::new("export")
            .run("r")
            .runs(&w.runs)
            .arg("--triton", target)
            .arg("--quantize", "int8")
            .arg("--calibration-images", "40")
            .arg("--max-accuracy-drop", "-100")
            .fails();
    }
    assert_eq!(entries(&fresh), Vec::<String>::new());
    assert_eq!(
        entries(&repo.join("pipe_vgg16")),
        ["1", "config.pbtxt", "labels.txt"]
    );
    assert_eq!(entries(&repo), ["pipe_vgg16"]);
    let pixels = std::fs::read(&saved).unwrap();
    assert_eq!(pixels.len(), 40 * 32 * 32 * 3);
    let squash = pipe::data::ImageSpec::new(32, pipe::data::ResizePolicy::Squash).full_decode();
    let list = pipe::data::SplitList::read(&w.run("r").file("split.json")).unwrap();
    let train = list
        .load(
            pipe::data::SplitPart::Train,
            &squash,
            pipe::data::OnError::Stop,
        )
        .unwrap()
        .split
        .pixels;
    let train: Vec<&[u8]> = train.chunks(32 * 32 * 3).collect();
    for image in pixels.chunks(32 * 32 * 3) {
        assert!(train.contains(&image), "a saved image is no training image");
    }
}

/// `--tta flip`: the graph averages the model's outputs on each image and on its horizontal mirror.
/// On 12 asymmetric images and with both backends, the flip export's probabilities (and, with
/// `--logits`, logits) equal the mean of the plain export's outputs on the image and on its mirror
/// (mirrored here with the image crate) within 1e-5; opsets 13 and 21 (`Split` changed at 18) pass
/// `onnx.checker`; the metadata says `tta: flip`; with `--quantize int8` it is refused; `pipe
/// evaluate --tta flip` agrees with the flip export.
#[test]
fn tta_flip_export_outputs_the_mean_of_the_image_and_its_mirror() {
    let w = Workdir::binary_release(20);
    small_run(&w, "r");
    let dir = w.join("imgs");
    std::fs::create_dir_all(&dir).unwrap();
    let mut originals = Vec::new();
    let mut mirrors = Vec::new();
    for i in 0..12u32 {
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            // Brighter on the left, a diagonal bar: nothing is symmetric.
            image::Rgb([
                (255 - x * 7) as u8,
                ((x + 2 * y + i * 9) % 64 * 4) as u8,
                if x > y { 200 } else { (i * 20) as u8 },
            ])
        });
        let (a, b) = (
            dir.join(format!("{i:02}.png")),
            dir.join(format!("{i:02}-mirror.png")),
        );
        img.save(&a).unwrap();
        image::imageops::flip_horizontal(&img).save(&b).unwrap();
        originals.push(a);
        mirrors.push(b);
    }
    for (logits, opset) in [(false, "13"), (true, "21")] {
        let (plain, tta) = (
            w.join(format!("plain{opset}.onnx")),
            w.join(format!("tta{opset}.onnx")),
        );
        let export = |out: &Path| {
            let e = w.export("r", out).arg("--opset", opset);
            if logits {
                e.flag("--logits")
            } else {
                e
            }
        };
        export(&plain).ok();
        let out = export(&tta).arg("--tta", "flip").ok();
        assert_verified(&out.stdout, 20);
        assert_contains(&out.stdout, &["test-time augmentation: flip)"]);
        for backend in ["tract", "ort"] {
            let run = |model: &Path, files: &[std::path::PathBuf]| {
                Pipe::infer(model)
                    .backend(backend)
                    .paths(files)
                    .infer_json()
                    .predictions
            };
            let (a, b, t) = (
                run(&plain, &originals),
                run(&plain, &mirrors),
                run(&tta, &originals),
            );
            let mut worst = 0f32;
            let mut moved = 0f32;
            for ((a, b), t) in a.iter().zip(&b).zip(&t) {
                for ((x, y), z) in a
                    .probabilities
                    .iter()
                    .zip(&b.probabilities)
                    .zip(&t.probabilities)
                {
                    worst = worst.max(((x + y) / 2.0 - z).abs());
                    moved = moved.max((x - z).abs());
                }
            }
            assert!(
                worst <= 1e-5,
                "{backend} opset {opset}: |mean - tta| {worst}"
            );
            assert!(
                moved > 1e-4,
                "{backend}: the mirror changed nothing ({moved})"
            );
        }
    }
    // `pipe evaluate --tta flip` reaches the same probabilities through libtorch and its own
    // mirrored pixels: on a test split of these images (image i in class i mod 10), its loss is the
    // flip export's mean -ln p(label) in ort, and its accuracy the share of ort's labels that are
    // right; without --tta its loss differs.
    use pipe::arch::CIFAR10_CLASSES as CLASSES;
    let data = w.join("tta-data");
    for (i, img) in originals.iter().enumerate() {
        for (split, at) in [("test", i), ("train", i % 10)] {
            let class = data.join(split).join(CLASSES[i % 10]);
            std::fs::create_dir_all(&class).unwrap();
            std::fs::copy(img, class.join(format!("{at:02}.png"))).unwrap();
        }
    }
    let evaluate = |tta: bool| -> Value {
        let e = w
            .evaluate("r")
            .arg("--data", &data)
            .arg("--test-limit", "0")
            .format("json");
        let e = if tta { e.arg("--tta", "flip") } else { e };
        serde_json::from_str(&e.ok().stdout).unwrap()
    };
    let plain_ev = evaluate(false);
    let run_file = |name: &str| std::fs::read(w.runs.join("r").join(name)).unwrap();
    let plain_confusion = run_file("confusion.png");
    let tta_ev = evaluate(true);
    // The run's own figures stay the plain model's; the TTA ones are drawn beside them.
    assert!(
        run_file("confusion.png") == plain_confusion,
        "evaluate --tta redrew the run's confusion.png"
    );
    assert!(image::load_from_memory(&run_file("confusion-tta.png")).is_ok());
    assert_eq!(tta_ev["tta"], "flip");
    assert_eq!(tta_ev["report"]["images"], 12);
    let ort = Pipe::infer(w.join("tta13.onnx"))
        .backend("ort")
        .paths(&[data.join("test")])
        .infer_json()
        .predictions;
    assert_eq!(ort.len(), 12);
    let (mut loss, mut right) = (0f64, 0usize);
    for p in &ort {
        let class = Path::new(&p.path)
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|d| d.to_str())
            .unwrap();
        let label = CLASSES.iter().position(|c| *c == class).unwrap();
        loss -= f64::from(p.probabilities[label]).ln() / 12.0;
        right += usize::from(p.class_index == label);
    }
    let got = tta_ev["loss"].as_f64().unwrap();
    assert!(
        (got - loss).abs() <= 1e-5,
        "evaluate --tta {got}, ort {loss}"
    );
    assert_eq!(
        tta_ev["report"]["accuracy"].as_f64().unwrap(),
        right as f64 / 12.0
    );
    assert!((plain_ev["loss"].as_f64().unwrap() - loss).abs() > 1e-4);
    let [m13, m21] = onnx_check(&[&w.join("tta13.onnx"), &w.join("tta21.onnx")])
        .try_into()
        .unwrap();
    assert_interface(&m13, 32, "probabilities", 10);
    assert_interface(&m21, 32, "logits", 10);
    assert_eq!(m13.metadata.get("tta").map(String::as_str), Some("flip"));
    let err = w
        .export("r", w.join("q.onnx"))
        .arg("--tta", "flip")
        .arg("--quantize", "int8")
        .exits(2)
        .stderr;
    assert!(err.contains("'--tta <flip>' cannot be used with"), "{err}");
    assert!(!w.join("q.onnx").exists());
}
