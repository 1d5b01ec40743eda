//! Your own photos in `pipe train`: every dataset layout (train/ + test/, train/ + val/, a single
//! folder split by pipe, the CIFAR-10 binary release), the split list kept in the run (`split.json`)
//! and read back by `evaluate` and `--resume`, junk in the folders (hidden entries ignored, broken
//! files skipped, named, counted and listed, exit code 3; `--strict` stops), held-out splits that lack
//! a class or add one, photos of any shape at `--input-size 64 --resize crop` (trained, exported,
//! verified; photo augmentation resumed exactly), `--pooling max` exported and agreeing on both
//! backends, and `--preset photos` at 384 on a handful of photos.
//! Small generated photos and the real VGG16 weights of `make setup`.
#![cfg(feature = "train")]

mod common;

use common::{argmax, assert_contains, comparable_precision, png, Pipe, Run, Workdir};
use serde_json::Value;
use std::path::Path;

/// A photo of class `class` (0..) of `w`x`h` pixels, number `i`: a class colour with a diagonal
/// texture, so that a frozen-feature head tells the classes apart.
fn photo(path: &Path, w: u32, h: u32, class: usize, i: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let hue = [[200, 40, 40], [40, 180, 60], [50, 60, 210]][class % 3];
    png(path, w, h, |x, y| {
        let stripe = ((x + y * (class as u32 + 1) + i as u32) / 6 % 2) as u8;
        hue.map(|v: u8| v.saturating_sub(70 * stripe))
    });
}

/// `n` photos of each of `classes` in `dir/<class>/`, of alternating landscape and portrait shapes.
fn photos(dir: &Path, classes: &[&str], n: usize) {
    for (c, class) in classes.iter().enumerate() {
        for i in 0..n {
            let (w, h) = if i % 2 == 0 { (60, 44) } else { (40, 52) };
            photo(&dir.join(class).join(format!("{i:02}.png")), w, h, c, i);
        }
    }
}

/// A workdir whose `data` holds the folders `layout` names (`train:N test:N`, `train:N val:N` or
/// `one:N` for a single folder), each with N photos of ants, bees and flies.
fn photo_data(layout: &str) -> Workdir {
    let w = Workdir::new();
    for part in layout.split_whitespace() {
        let (folder, n) = part.split_once(':').unwrap();
        let dir = match folder {
            "one" => w.data.clone(),
            f => w.data.join(f),
        };
        photos(&dir, &["ants", "bees", "flies"], n.parse().unwrap());
    }
    w
}

/// `pipe train` of run `name` on all images for one epoch at 32x32, batch 8.
fn quick(w: &Workdir, name: &str) -> common::Pipe {
    w.train(name).limits(0, 0).epochs(1).batch(8)
}

/// The file names of a split of `split.json`.
fn files(split: &Value, part: &str) -> Vec<String> {
    split[part]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["file"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_layout_is_detected_said_first_and_trained() {
    let cases = [
        (
            "train:4 test:2",
            "image folders train/ + test/",
            "train_test",
            "test",
        ),
        (
            "train:4 val:2",
            "image folders train/ + val/",
            "train_val",
            "val",
        ),
        ("one:6", "one folder of class folders", "class_folders", ""),
    ];
    for (layout, said, kind, held_out) in cases {
        let w = photo_data(layout);
        let err = quick(&w, "r").ok().stderr;
        let first = err.lines().next().unwrap();
        assert!(first.starts_with(&format!("data: {said}")), "{first}");
        let run = w.run("r");
        let split = common::read_json(&run.file("split.json"));
        assert_eq!(split["layout"], kind);
        assert_eq!(run.config()["layout"], kind);
        let preds = run.predictions();
        assert_eq!(preds.data_root, w.data.join(held_out), "{layout}");
        // predictions.json names the files as split.json does, relative to the held-out folder.
        let prefix = if held_out.is_empty() {
            String::new()
        } else {
            format!("{held_out}/")
        };
        let listed: Vec<String> = files(&split, "test");
        let named: Vec<String> = preds
            .items
            .iter()
            .map(|i| format!("{prefix}{}", i.file))
            .collect();
        assert_eq!(named, listed, "{layout}");
        assert_eq!(
            common::read_json(&run.file("skipped.json")),
            Value::Array(vec![])
        );
    }
    // The binary release: its own held-out test batch.
    let w = Workdir::binary_release(10);
    let err = quick(&w, "b").ok().stderr;
    assert!(err.starts_with("data: CIFAR-10 binary release in"), "{err}");
    assert_eq!(w.run("b").config()["layout"], "cifar_binary");
}

#[test]
fn single_folder_split_is_seeded_and_kept_by_evaluate_and_resume() {
    let w = photo_data("one:10");
    let split_of = |name: &str| common::read_json(&w.run(name).file("split.json"));
    let a = quick(&w, "a").seed(7).ok().stderr;
    // Of 10 photos a class, round(0.15 x 10) = 2 validate and 2 test.
    assert!(
        a.contains("split: 3 classes: train 18, validation 6, test 6 images (seed 7)"),
        "{a}"
    );
    quick(&w, "b").seed(7).ok();
    quick(&w, "c").seed(8).ok();
    let (sa, sb, sc) = (split_of("a"), split_of("b"), split_of("c"));
    assert_eq!(sa, sb, "same seed, same split");
    assert_ne!(
        files(&sa, "val"),
        files(&sc, "val"),
        "another seed, another split"
    );
    assert_eq!(
        (sa["val_share"].as_f64(), sa["test_share"].as_f64()),
        (Some(0.15), Some(0.15))
    );

    // The data changes after training: evaluate and resume still see the run's own images.
    quick(&w, "i")
        .seed(7)
        .epochs(2)
        .arg("--interrupt-after-epoch", "1")
        .fails();
    photos(&w.data, &["ants", "bees", "flies"], 14);
    let ev: Value = serde_json::from_str(&w.evaluate("a").format("json").ok().stdout).unwrap();
    assert_eq!(ev["report"]["images"], 6);
    let tested = w.run("a").predictions().accuracy();
    assert!((ev["report"]["accuracy"].as_f64().unwrap() - tested).abs() < 1e-6);
    w.resume().name("i").ok();
    assert_eq!(split_of("i"), sa);
    assert_eq!(w.run("i").config()["train_images"], 18);
    assert_eq!(w.run("i").history().len(), 2);
    // A new run with the same seed now splits the 14 photos a class.
    quick(&w, "n").seed(7).ok();
    assert_eq!(files(&split_of("n"), "train").len(), 3 * 10);
}

#[test]
fn junk_is_ignored_and_broken_files_are_skipped_named_counted_and_listed() {
    let w = photo_data("train:4 test:2");
    let d = &w.data;
    // Hidden and system entries: never classes nor samples, no warning.
    let junk = [
        "train/.DS_Store",
        "train/ants/._00.png",
        "train/ants/Thumbs.db",
        "train/bees/desktop.ini",
        "train/__MACOSX/ants/._01.png",
        "train/.ipynb_checkpoints/ants/00-checkpoint.png",
    ];
    for f in junk {
        w.write(Path::new("data").join(f), b"junk");
    }
    // Broken files: empty, text named .jpg, a JPEG cut in its image data, a header announcing
    // 60000x60000.
    let jpeg = {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&image::RgbImage::from_fn(96, 80, |x, y| {
                image::Rgb([(x * 7 + y * 13) as u8, (x * y) as u8, (x ^ y) as u8])
            }))
            .unwrap();
        out
    };
    let mut bomb = jpeg.clone();
    let sof = bomb.windows(2).position(|x| x == [0xFF, 0xC0]).unwrap();
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    let bad = [
        ("train/ants/empty.jpg", Vec::new(), "empty"),
        (
            "train/bees/notes.jpg",
            b"not a photo".to_vec(),
            "not_an_image",
        ),
        (
            "train/flies/cut.jpg",
            jpeg[..jpeg.len() / 2].to_vec(),
            "truncated",
        ),
        ("test/bees/bomb.jpg", bomb, "oversized"),
    ];
    for (f, bytes, _) in &bad {
        w.write(Path::new("data").join(f), bytes);
    }
    let out = quick(&w, "r").output();
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code 3: files were skipped"
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    for (f, _, reason) in &bad {
        let line = format!("warning: skipped {} ({reason})", d.join(f).display());
        assert_eq!(stderr.matches(&line).count(), 1, "{line} once: {stderr}");
    }
    // No junk entry is named anywhere (a warning, a "not an image" line, a class).
    for name in [
        ".DS_Store",
        "._00.png",
        "Thumbs.db",
        "desktop.ini",
        "__MACOSX",
        "._01.png",
        ".ipynb_checkpoints",
        "00-checkpoint.png",
    ] {
        assert!(
            !stderr.contains(name) && !stdout.contains(name),
            "{name} is named: {stderr}{stdout}"
        );
    }
    assert_eq!(junk.len(), 6);
    assert_contains(
        &stdout,
        &[
            "skipped 4 image files that could not be decoded",
            "skipped.json",
        ],
    );
    let run = w.run("r");
    assert_eq!(
        run.config()["classes"],
        serde_json::json!(["ants", "bees", "flies"])
    );
    assert_eq!(
        (
            run.config()["train_images"].clone(),
            run.config()["test_images"].clone()
        ),
        (12.into(), 6.into())
    );
    let listed = common::read_json(&run.file("skipped.json"));
    let listed: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["path"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = bad
        .iter()
        .map(|(f, _, r)| (d.join(f).display().to_string(), r.to_string()))
        .collect();
    assert_eq!(listed, want);
    // The empty and the text file take no place in a split (their first bytes show it): the run's
    // split list holds them apart; the others fail only when decoded.
    let split = common::read_json(&run.file("split.json"));
    let unusable: Vec<&str> = split["unusable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        unusable,
        [d.join(bad[0].0), d.join(bad[1].0)].map(|p| p.display().to_string())
    );
    assert_eq!(files(&split, "train").len(), 13);
    assert_eq!(files(&split, "test").len(), 7);

    // --strict: the first bad file (in list order) stops the run, no run folder is left.
    let err = quick(&w, "s").flag("--strict").fails();
    assert_contains(&err, &["empty.jpg", "empty file"]);
    assert!(!w.runs.join("s").exists());
}

#[test]
fn held_out_split_may_lack_a_class_but_not_add_one() {
    let w = photo_data("train:4");
    photos(&w.data.join("test"), &["ants", "bees"], 2);
    quick(&w, "r").ok();
    let run = w.run("r");
    assert_eq!(
        run.config()["classes"],
        serde_json::json!(["ants", "bees", "flies"])
    );
    let preds = run.predictions();
    assert_eq!(preds.items.len(), 4);
    assert!(preds.items.iter().all(|i| i.label < 2));
    photos(&w.data.join("test"), &["wasps"], 1);
    let err = quick(&w, "x").fails();
    assert_contains(
        &err,
        &[
            "test/wasps",
            r#"class "wasps" is not a class of the training split"#,
        ],
    );
    assert!(!w.runs.join("x").exists());
}

#[test]
fn crop_at_64_trains_exports_verifies_and_photo_augmentation_resumes_exactly() {
    let w = photo_data("train:4 val:2");
    let run = |name: &str| {
        w.train(name)
            .limits(0, 0)
            .arg("--input-size", "64")
            .arg("--resize", "crop")
            .batch(6)
    };
    run("c").epochs(2).ok();
    let c = w.run("c");
    assert_eq!(c.config()["resize"], "crop");
    w.export_verified("c", w.join("c.onnx"), 6);

    // Fine-tuning the last conv with photo augmentation: interrupted and resumed, it ends as the
    // uninterrupted run (both in the precision auto picks without a timing).
    let tune = |name: &str| {
        run(name)
            .epochs(2)
            .arg("--unfreeze", "1")
            .flag("--augment")
            .arg("--augment-style", "photo")
            .arg("--head-epochs", "1")
            .arg("--precision", comparable_precision())
            .lr("1e-5")
    };
    let err = tune("f").ok().stderr;
    assert!(err.contains("random resized crops and flips"), "{err}");
    assert_eq!(w.run("f").config()["augment_style"], "photo");
    tune("g").arg("--interrupt-after-epoch", "1").fails();
    w.resume().name("g").ok();
    let (f, g) = (w.run("f"), w.run("g"));
    assert_eq!(f.bytes("history.json"), g.bytes("history.json"));
    for file in ["head.safetensors", "base.safetensors"] {
        assert_eq!(f.tensors(file), g.tensors(file), "{file}");
    }
    w.export_verified("f", w.join("f.onnx"), 6);
}

/// `--pooling max`: the head takes the 512 channel maxima (dense1 `[256, 512]` at 64x64, where
/// flatten gives 2,048 features); the exported graph (GlobalMaxPool, LpNormalization) passes
/// onnx.checker and export's verification, and tract and ONNX Runtime give every `val/` photo tch's
/// label, with probabilities within 1e-4 of tch's.
#[test]
fn max_pooling_exports_and_both_backends_agree_with_tch() {
    let w = photo_data("train:4 val:2");
    w.train("m")
        .limits(0, 0)
        .arg("--input-size", "64")
        .arg("--resize", "crop")
        .arg("--pooling", "max")
        .epochs(2)
        .batch(6)
        .ok();
    let run = w.run("m");
    assert_eq!(run.config()["pooling"], "max");
    run.assert_head_takes(512);
    let onnx = w.join("m.onnx");
    w.export_verified("m", &onnx, 6);
    let [m] = common::onnx::onnx_check(&[&onnx]).try_into().unwrap();
    assert_eq!(m.metadata["pooling"], "max");
    let preds = run.predictions();
    let tch = preds.by_path();
    for backend in ["tract", "ort"] {
        let got = Pipe::infer(&onnx)
            .backend(backend)
            .paths(preds.paths())
            .infer_json();
        assert_eq!(got.predictions.len(), 6, "{backend}");
        for r in &got.predictions {
            let want = tch[&r.path];
            assert_eq!(r.class_index, argmax(want), "{backend}: {}", r.path);
            for (a, b) in r.probabilities.iter().zip(want) {
                assert!((a - b).abs() <= 1e-4, "{backend}: {}: {a} vs {b}", r.path);
            }
        }
    }
}

#[test]
fn preset_photos_trains_at_384_with_crop_and_max_pooling() {
    let w = photo_data("train:2 val:1");
    let out = w.train("p").arg("--preset", "photos").epochs(1).ok();
    assert_contains(
        &out.stderr,
        &["VGG16 frozen base + global max pooling (L2-normalised) + dense head"],
    );
    let run = Run::open(w.runs.join("p"));
    let config = run.config();
    assert_eq!(
        (
            config["input_size"].clone(),
            config["resize"].clone(),
            config["pooling"].clone()
        ),
        (384.into(), "crop".into(), "max".into())
    );
    assert_eq!(run.predictions().items.len(), 3);
}

/// Balanced accuracy and macro-F1 of `preds`, computed here from the labels and argmaxes (scikit-
/// learn's definitions: recall averaged over classes with images; F1 averaged over classes with
/// images or predictions).
fn balanced_and_macro_f1(preds: &common::Predictions) -> (f64, f64) {
    let c = preds.classes.len();
    let (mut tp, mut truth, mut predicted) = (vec![0f64; c], vec![0f64; c], vec![0f64; c]);
    for it in &preds.items {
        let p = argmax(&it.probabilities);
        truth[it.label] += 1.0;
        predicted[p] += 1.0;
        if p == it.label {
            tp[it.label] += 1.0;
        }
    }
    let recalls: Vec<f64> = (0..c)
        .filter(|&k| truth[k] > 0.0)
        .map(|k| tp[k] / truth[k])
        .collect();
    let f1s: Vec<f64> = (0..c)
        .filter(|&k| truth[k] + predicted[k] > 0.0)
        .map(|k| 2.0 * tp[k] / (truth[k] + predicted[k]))
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    (mean(&recalls), mean(&f1s))
}

/// Imbalanced classes: 12 photos of ants and of bees, 3 of flies that look like ants. Every accuracy
/// report (train's closing lines, `evaluate`, `pipe infer` on the class folders) gives balanced
/// accuracy and macro-F1 beside accuracy, equal to the figures computed here from tch's predictions;
/// and balanced accuracy is below accuracy, as the rare class is the one confused.
#[test]
fn imbalanced_classes_report_balanced_accuracy_and_macro_f1() {
    let w = Workdir::new();
    for (split, n, rare) in [("train", 12, 3), ("test", 6, 3)] {
        let dir = w.data.join(split);
        photos(&dir, &["ants", "bees"], n);
        for i in 0..rare {
            photo(&dir.join(format!("flies/{i:02}.png")), 60, 44, 0, 40 + i);
        }
    }
    let out = quick(&w, "r").epochs(3).ok();
    let preds = w.run("r").predictions();
    let (balanced, f1) = balanced_and_macro_f1(&preds);
    let accuracy = preds.accuracy();
    let line = format!("balanced accuracy {balanced:.4}  macro-F1 {f1:.4}");
    assert!(out.stdout.contains(&line), "{line}: {}", out.stdout);
    assert!(
        balanced < accuracy,
        "balanced {balanced} against {accuracy}"
    );
    let ev: Value = serde_json::from_str(&w.evaluate("r").format("json").ok().stdout).unwrap();
    assert!((ev["report"]["balanced_accuracy"].as_f64().unwrap() - balanced).abs() < 1e-9);
    assert!((ev["report"]["macro_f1"].as_f64().unwrap() - f1).abs() < 1e-9);
    assert!(w.evaluate("r").ok().stdout.contains(&line));
    let model = w.join("r.onnx");
    w.export("r", &model).ok();
    let infer = Pipe::infer(&model).path(w.data.join("test")).ok();
    assert!(infer.stderr.contains(&line), "{line}: {}", infer.stderr);
}

/// `pipe review` on 12 training photos of each of three classes, three of them moved on purpose into
/// another class's folder: those three rank first in `review.json`, each with its true class
/// suggested, and `review.png` is written; a run trained after it is byte-identical to one trained
/// before. The photos preset's class weights are on (`auto`), as `pipe lr-find` and `pipe sweep` get
/// them too. `--folds 1` is refused before any work.
#[test]
fn review_ranks_deliberately_mislabelled_photos_first() {
    let w = photo_data("train:12 test:3");
    let flips = [
        ("ants", "00", "bees"),
        ("bees", "01", "flies"),
        ("flies", "02", "ants"),
    ];
    for (from, i, to) in flips {
        let train = w.data.join("train");
        std::fs::rename(
            train.join(from).join(format!("{i}.png")),
            train.join(to).join(format!("{from}-{i}.png")),
        )
        .unwrap();
    }
    let out_dir = w.join("review");
    let review = |folds: &str| {
        Pipe::new("review")
            .arg("--device", "cpu")
            .data(&w.data)
            .weights(common::weights())
            .cache(&w.cache)
            .limits(0, 0)
            .arg("--preset", "photos")
            .arg("--input-size", "32")
            .arg("--epochs", "10")
            .arg("--batch-size", "8")
            .arg("--folds", folds)
            .arg("--out", &out_dir)
    };
    quick(&w, "before").ok();
    let refused = review("1").fails();
    assert_contains(&refused, &["--folds 1", "at least 2"]);
    assert!(
        !out_dir.exists(),
        "a refused review wrote {}",
        out_dir.display()
    );
    let out = review("4").ok();
    assert_contains(&out.stdout, &["36 training images in 4 folds"]);
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("review.json")).unwrap()).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 36);
    let mut top: Vec<(String, String, String)> = rows[..3]
        .iter()
        .map(|r| {
            let path = r["path"].as_str().unwrap();
            let file = Path::new(path).file_name().unwrap().to_str().unwrap();
            (
                file.to_string(),
                r["given"].as_str().unwrap().to_string(),
                r["suggested"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    top.sort();
    let mut want: Vec<(String, String, String)> = flips
        .iter()
        .map(|(from, i, to)| (format!("{from}-{i}.png"), to.to_string(), from.to_string()))
        .collect();
    want.sort();
    assert_eq!(top, want, "the three most suspect rows: {rows:?}");
    let scores: Vec<f64> = rows.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|p| p[0] <= p[1]), "{scores:?}");
    assert!(scores[2] < 0.5 && scores[3] > 0.5, "{scores:?}");
    let png = std::fs::read(out_dir.join("review.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    // It leaves no trace: a run trained after it is the run trained before it.
    quick(&w, "after").ok();
    let (before, after) = (w.run("before"), w.run("after"));
    for f in ["history.json", "predictions.json", "head.safetensors"] {
        assert_eq!(before.bytes(f), after.bytes(f), "{f}");
    }
}

/// A 128x128 picture of a 40-pixel square of `colour` with its top-left corner at (`x`, `y`) on plain
/// grey.
fn square(w: &Workdir, name: &str, colour: [u8; 3], (x, y): (u32, u32)) -> std::path::PathBuf {
    w.png(name, 128, 128, |i, j| {
        if (x..x + 40).contains(&i) && (y..y + 40).contains(&j) {
            colour
        } else {
            [125; 3]
        }
    })
}

/// `pipe explain` on a run that tells a red square from a blue one anywhere on grey (128 pixels):
/// the hottest cell of the 8x8 Grad-CAM map follows the red square to each corner; the overlays are
/// written (256 pixels), the run used is named. A file that is not an image is named and skipped
/// inside a folder (exit code 3), an error when named on the command line (exit code 1, after the
/// others were explained); a missing path and an unknown `--class` (refused naming the run's
/// classes) stop it before any work.
#[test]
fn explain_heatmaps_follow_the_object() {
    let w = Workdir::new();
    let (red, blue) = ([220, 30, 30], [30, 40, 220]);
    for (split, n) in [("train", 20u32), ("test", 4)] {
        for k in 0..n {
            let at = ((k * 17) % 89, (k * 29 + 7) % 89);
            square(&w, &format!("data/{split}/red/{k:02}.png"), red, at);
            square(&w, &format!("data/{split}/blue/{k:02}.png"), blue, at);
        }
    }
    w.train("cam")
        .limits(0, 0)
        .epochs(10)
        .batch(8)
        .arg("--input-size", "128")
        .arg("--optimizer", "adam")
        .arg("--lr", "1e-3")
        .ok();
    let probes = [
        ("top_left", (4, 4)),
        ("top_right", (84, 4)),
        ("bottom_right", (84, 84)),
        ("bottom_left", (4, 84)),
    ];
    let mut files: Vec<std::path::PathBuf> = probes
        .iter()
        .map(|(name, at)| square(&w, &format!("probe/{name}.png"), red, *at))
        .collect();
    files.push(w.write("probe/notes.png", b"not an image"));
    let out_dir = w.join("cam");
    let explain = |inputs: &[std::path::PathBuf]| {
        Pipe::new("explain")
            .runs(&w.runs)
            .run("cam")
            .arg("--device", "cpu")
            .arg("-o", &out_dir)
            .paths(inputs)
    };
    let err = explain(&files).arg("--class", "green").fails();
    assert_contains(&err, &["--class green", "blue", "red"]);
    let err = explain(&[w.join("probe/missing.png")]).fails();
    assert_contains(&err, &["probe/missing.png"]);
    assert!(
        !out_dir.exists(),
        "nothing written before the inputs were checked"
    );
    // Named on the command line: the four images are explained, then the bad one is the error.
    let out = explain(&files).exits(1);
    assert_contains(&out.stderr, &["error:", "notes.png: not an image"]);
    assert_eq!(out.stderr.matches("notes.png").count(), 1, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 4, "{}", out.stdout);
    // Inside a folder: skipped and named once, with what is wrong with it.
    let out = explain(&[w.join("probe")]).exits(3);
    assert_contains(
        &out.stderr,
        &[
            "explaining with the run",
            "(blue, red)",
            "warning: skipped",
            "notes.png: not an image",
            "1 of 5 images skipped",
        ],
    );
    assert_eq!(out.stderr.matches("notes.png").count(), 1, "{}", out.stderr);
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("explain.json")).unwrap()).unwrap();
    // The run's folder, as a path.
    assert!(doc["run"].as_str().unwrap().ends_with("cam"), "{doc}");
    let images = doc["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    for (name, _) in &probes {
        let e = images
            .iter()
            .find(|e| {
                e["path"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("{name}.png"))
            })
            .unwrap_or_else(|| panic!("{name} in {doc}"));
        assert!(e["heatmap"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{name}.cam.png")));
        assert_eq!(e["predicted"], "red", "{name}");
        assert_eq!(e["map_side"], 8);
        let (row, col) = (
            e["hottest"][0].as_u64().unwrap(),
            e["hottest"][1].as_u64().unwrap(),
        );
        let want_row = if name.starts_with("top") { 0..4 } else { 4..8 };
        let want_col = if name.ends_with("left") { 0..4 } else { 4..8 };
        assert!(
            want_row.contains(&row) && want_col.contains(&col),
            "{name}: hottest cell ({row}, {col}) in {:?}",
            e["map"]
        );
        let png = image::open(out_dir.join(format!("{name}.cam.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (256, 256), "{name}");
    }
}
