//! Training features beyond the main job, on real weights (made by `make setup`) and a generated
//! CIFAR-10 binary release: feature cache and its key, determinism, resume after an interruption,
//! evaluate, sweep, figures, divergence.
#![cfg(feature = "train")]

mod common;

use common::{s, weights, Workdir};
use serde_json::Value;
use std::path::Path;

#[test]
fn binary_release_cache_determinism_resume_evaluate_and_sweep() {
    let w = Workdir::binary_release(40);
    let train = |name: &str| w.train(name).limits(150, 40).epochs(4).batch(16);

    // First run extracts features from the binary release; the second reuses them from the cache.
    let a = train("a").ok();
    assert!(a.stderr.contains("190 images through the frozen base"));
    // Without a terminal (as here) the hidden progress bar leaves a line as extraction starts.
    assert!(
        a.stderr.contains("extracting features: ") && a.stderr.contains(" images ..."),
        "{}",
        a.stderr
    );
    let b = train("b").ok();
    assert!(b.stderr.contains("all 190 images from the feature cache"));
    // Same seed, same device: identical history and head weights.
    let (ra, rb) = (w.run("a"), w.run("b"));
    let top_losses_by_train = ra.bytes("top_losses.png");
    assert_eq!(ra.bytes("history.json"), rb.bytes("history.json"));
    assert_eq!(ra.bytes("head.safetensors"), rb.bytes("head.safetensors"));
    let preds = ra.predictions();
    assert_eq!(preds.items.len(), 40);
    assert_eq!(preds.items[0].file, "test_batch.bin#0");
    assert_eq!(
        preds.items[1].file, "test_batch.bin#1",
        "all 40 test records, in file order"
    );
    // Another seed gives another history (the seed is really used).
    train("c").seed(7).ok();
    assert_ne!(ra.bytes("history.json"), w.run("c").bytes("history.json"));

    // Interrupted after epoch 2, resumed: the same final result as the uninterrupted run "a".
    let err = train("interrupted")
        .arg("--interrupt-after-epoch", "2")
        .fails();
    assert!(err.contains("--resume"), "{err}");
    let ri = w.run("interrupted");
    assert!(ri.file("checkpoint.safetensors").is_file());
    assert!(!ri.file("head.safetensors").exists());
    let x = w.join("x.onnx");
    let err = w.export("interrupted", &x).fails();
    assert!(
        err.contains("unfinished run"),
        "an unfinished run is not exported: {err}"
    );
    assert!(!x.exists());
    // Without --name, --resume continues the newest unfinished run.
    let err = w.resume().ok().stderr;
    assert!(err.contains("continuing after epoch 2 of 4"), "{err}");
    for f in ["history.json", "head.safetensors", "predictions.json"] {
        assert_eq!(ra.bytes(f), ri.bytes(f), "{f}");
    }

    // evaluate recomputes the run's test metrics from the cache and the saved head.
    let final_acc = ra.history().last().unwrap().val_accuracy;
    let out = w.evaluate("a").format("json").ok();
    let ev: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!((ev["report"]["accuracy"].as_f64().unwrap() - final_acc).abs() < 1e-6);
    let confusion = ev["report"]["confusion"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 40);
    let text = w.evaluate("a").ok().stdout;
    assert!(
        text.contains("precision") && text.contains("confusion matrix"),
        "{text}"
    );
    // The run's figures: curves, prediction grid (10 test images, 2x5), confusion matrix (redrawn by
    // evaluate, or drawn where --confusion-png says; a missing folder is refused before any work).
    for (png, width, height) in [
        ("accuracy.png", 800, 500),
        ("loss.png", 800, 500),
        ("predictions.png", 950, 450),
    ] {
        let img = image::open(ra.file(png)).unwrap();
        assert_eq!((img.width(), img.height()), (width, height), "{png}");
    }
    let img = image::load_from_memory(&top_losses_by_train).unwrap();
    assert_eq!((img.width(), img.height()), (950, 450), "top_losses.png");
    // top_losses.png starts with the test record of the highest loss, -ln p(label) computed here
    // from predictions.json: its first tile shows that record's pixels (read from the binary
    // release, red, green and blue planes after the label byte), each scaled 4x.
    let worst = preds
        .items
        .iter()
        .map(|it| -f64::from(it.probabilities[it.label]).ln())
        .enumerate()
        .fold((0, f64::MIN), |b, (i, l)| if l > b.1 { (i, l) } else { b })
        .0;
    let record: usize = preds.items[worst]
        .file
        .split('#')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let bin = std::fs::read(preds.data_root.join("test_batch.bin")).unwrap();
    let pixels = &bin[record * 3073 + 1..(record + 1) * 3073];
    let top = image::load_from_memory(&top_losses_by_train)
        .unwrap()
        .to_rgb8();
    let (x0, y0, _) = pipe::plot::tile_origin(0, 5);
    for sy in 1..31 {
        for sx in 1..31 {
            let got = top
                .get_pixel(x0 + 4 * sx as u32 + 1, y0 + 4 * sy as u32 + 1)
                .0;
            let want = [0, 1, 2].map(|c| pixels[c * 1024 + sy * 32 + sx]);
            assert_eq!(got, want, "record {record}, pixel ({sx}, {sy})");
        }
    }
    // evaluate lists the same highest losses and redraws top_losses.png as the run drew it.
    std::fs::remove_file(ra.file("top_losses.png")).unwrap();
    let out = w.evaluate("a").format("json").ok();
    let ev: Value = serde_json::from_str(&out.stdout).unwrap();
    let top = ev["top_losses"].as_array().unwrap();
    assert_eq!(top.len(), 10);
    assert_eq!(top[0]["file"], preds.items[worst].file.as_str());
    let loss = -f64::from(preds.items[worst].probabilities[preds.items[worst].label]).ln();
    assert!(
        (top[0]["loss"].as_f64().unwrap() - loss).abs() < 1e-4,
        "{top:?}"
    );
    assert!(
        ra.bytes("top_losses.png") == top_losses_by_train,
        "evaluate drew another top_losses.png than the run"
    );
    let confusion_png = image::open(ra.file("confusion.png")).unwrap();
    assert!(confusion_png.width() > 400 && confusion_png.height() > 400);
    let elsewhere = w.join("conf.png");
    let out = w.evaluate("a").arg("--confusion-png", &elsewhere).ok();
    assert!(out.stderr.contains(s(&elsewhere)), "{}", out.stderr);
    let drawn = image::open(&elsewhere).unwrap();
    assert_eq!(
        (drawn.width(), drawn.height()),
        (confusion_png.width(), confusion_png.height())
    );
    let err = w
        .evaluate("a")
        .arg("--confusion-png", w.join("no/such/folder/c.png"))
        .fails();
    assert!(err.contains("does not exist"), "{err}");
    assert!(!w.join("no").exists());

    // A sweep of 2 batch sizes x 2 learning rates from the cache: no extraction.
    let out_dir = w.join("sweep");
    let table = w
        .sweep()
        .limits(150, 40)
        .epochs(3)
        .arg("--batch-sizes", "16,32")
        .arg("--lrs", "1e-4,1e-5")
        .arg("--out", &out_dir)
        .ok()
        .stdout;
    assert!(table.contains("(0 images extracted)"), "{table}");
    let sweep: Value = common::read_json(&out_dir.join("sweep.json"));
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
    train("three").epochs(3).ok();
    let h3: Value = serde_json::from_slice(&w.run("three").bytes("history.json")).unwrap();
    assert_eq!(settings[0]["history"], h3);
}

/// Images a `pipe train` ran through the frozen base, from its `features:` line (0: all cached).
fn extracted(stderr: &str) -> usize {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("features: "))
        .unwrap_or_else(|| panic!("no features line: {stderr}"));
    if line.starts_with("all ") && line.contains(" images from the feature cache") {
        return 0;
    }
    line.split(" images through the frozen base")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// The feature cache is keyed by the weights, the input size and the pixels of each split: changing
/// any of them extracts again (only the split a changed pixel is in), changing nothing does not.
#[test]
fn feature_cache_misses_when_a_pixel_the_input_size_or_the_weights_change() {
    let w = Workdir::binary_release(10);
    let train = |name: &str| w.train(name).limits(50, 10).epochs(1).batch(10);
    assert_eq!(extracted(&train("first").ok().stderr), 60);
    assert_eq!(extracted(&train("again").ok().stderr), 0);
    // One bit of one pixel of test record 4: the test split (10 images) is extracted again.
    let test_file = w.data.join("test_batch.bin");
    let mut bytes = std::fs::read(&test_file).unwrap();
    bytes[4 * 3073 + 1 + 500] ^= 1;
    std::fs::write(&test_file, bytes).unwrap();
    assert_eq!(extracted(&train("pixel").ok().stderr), 10);
    assert_eq!(extracted(&train("pixel-again").ok().stderr), 0);
    // Another input size: both splits.
    let size = train("size").arg("--input-size", "64").ok().stderr;
    assert_eq!(extracted(&size), 60);
    // Weights with one mantissa bit of one value flipped (another fingerprint): both splits.
    let mut weights_bytes = std::fs::read(weights()).unwrap();
    let last = weights_bytes.len() - 4;
    weights_bytes[last] ^= 1;
    let changed = w.join("changed.safetensors");
    std::fs::write(&changed, weights_bytes).unwrap();
    let err = train("weights").weights(&changed).fails();
    assert!(err.contains("fingerprint"), "{err}");
    let out = train("weights")
        .weights(&changed)
        .flag("--allow-unverified")
        .ok();
    assert_eq!(extracted(&out.stderr), 60);
    assert_ne!(
        w.run("weights").config()["weights_fingerprint"],
        w.run("first").config()["weights_fingerprint"]
    );
}

#[test]
fn diverging_training_stops_with_an_explanation() {
    let w = Workdir::binary_release(20);
    let err = w
        .train("boom")
        .limits(60, 20)
        .epochs(3)
        .batch(8)
        .lr("1e6")
        .no_cache()
        .fails();
    assert!(err.contains("diverged") && err.contains("--lr"), "{err}");
    assert!(!w.runs.join("boom/head.safetensors").exists());
    assert!(!w.runs.join("latest").exists());
    // It diverged in epoch 1: no checkpoint, so the run folder (only config.json) is removed and a
    // later `--resume` does not pick it up.
    assert!(err.contains("the empty run folder was removed"), "{err}");
    assert!(!w.runs.join("boom").exists());
}

/// `pipe summary`: the Keras-style layer table and its totals.
#[test]
fn summary_prints_the_layer_table_and_parameter_counts() {
    let out = common::Pipe::new("summary").ok().stdout;
    for line in [
        "Total params: 14,848,586",
        "Trainable params (dense head): 133,898",
        "Non-trainable params (frozen VGG16 base): 14,714,688",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let layers: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with(" yes") || l.ends_with(" no"))
        .collect();
    // The input, the 13 convs and 5 max-pools of the base, then flatten, dense, ReLU, dropout, dense;
    // only the two dense layers train.
    assert_eq!(layers.len(), 24, "{out}");
    let trained: Vec<&str> = layers
        .iter()
        .filter(|l| l.ends_with(" yes"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(trained, ["dense1", "dense2"]);
    let at64 = common::Pipe::new("summary")
        .arg("--input-size", "64")
        .ok()
        .stdout;
    assert!(
        at64.contains("Trainable params (dense head): 527,114"),
        "{at64}"
    );
    let err = common::Pipe::new("summary")
        .arg("--input-size", "48")
        .fails();
    assert!(err.contains("multiple of 32"), "{err}");
}

/// `pipe lr-find` on the recipe's head: the rates grow exponentially from --start-lr, the test stops
/// when the smoothed loss diverges (at lr 10 it must), the suggestion lies inside the rates tried and
/// below the divergence, `lr_find.png` and `lr_find.json` are written; and it leaves no trace: a run
/// trained after it is byte-identical to one trained before it.
#[test]
fn lr_find_suggests_a_rate_and_leaves_no_trace() {
    let w = Workdir::binary_release(40);
    let train = |name: &str| w.train(name).limits(100, 40).epochs(2).batch(16);
    train("before").ok();
    let out_dir = w.join("lr");
    let out = common::Pipe::new("lr-find")
        .arg("--device", "cpu")
        .data(&w.data)
        .weights(weights())
        .cache(&w.cache)
        .limits(100, 40)
        .batch(16)
        .arg("--steps", "60")
        .arg("--out", &out_dir)
        .ok();
    assert!(
        out.stdout.contains("suggested learning rate")
            && out.stdout.contains("the recipe's --lr is 1e-4"),
        "{}",
        out.stdout
    );
    let data = std::path::absolute(&w.data).unwrap();
    let settings = format!(
        "pipe lr-find: data {}, 100 train images; the dense head on the frozen base's features; \
         SGD momentum 0.9 weight decay 0, batch 16, seed 42; learning rate 1e-7 to 10 over 60 steps",
        data.display()
    );
    assert!(out.stderr.contains(&settings), "{settings}\n{}", out.stderr);
    // Where the features came from, as pipe train says it (also when stderr is not a terminal).
    let _ = extracted(&out.stderr);
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("lr_find.json")).unwrap()).unwrap();
    assert_eq!(doc["data"].as_str(), data.to_str());
    // A 60-step sweep averages over half its steps: β = 1 - 2/60.
    assert!((doc["smoothing"].as_f64().unwrap() - (1.0 - 2.0 / 60.0)).abs() < 1e-12);
    let points = doc["points"].as_array().unwrap();
    assert_eq!(doc["stopped"], "diverged", "a rate of 10 diverges");
    assert!(points.len() > 20 && points.len() < 60, "{}", points.len());
    let lrs: Vec<f64> = points.iter().map(|p| p["lr"].as_f64().unwrap()).collect();
    assert!((lrs[0] - 1e-7).abs() < 1e-12);
    // Exponential: the same ratio between consecutive rates, (10 / 1e-7)^(1/59).
    let ratio = (10f64 / 1e-7).powf(1.0 / 59.0);
    for pair in lrs.windows(2) {
        assert!((pair[1] / pair[0] / ratio - 1.0).abs() < 1e-9);
    }
    let suggested = doc["suggestion"].as_f64().unwrap();
    assert!(
        suggested > lrs[0] && suggested < *lrs.last().unwrap(),
        "{suggested}"
    );
    // The default rule is fastai's valley, worked out here from the recorded smoothed losses: the
    // longest strictly decreasing subsequence, ending at `end` with length `len`; the step
    // `start + ⌊L/3⌋ + ⌊L/6⌋` of `start = end - len`, `L = end - start`.
    assert_eq!(doc["suggest"], "valley");
    let smoothed: Vec<f64> = points
        .iter()
        .map(|p| p["smoothed"].as_f64().unwrap())
        .collect();
    let (mut best_len, mut best_end) = (0, 0);
    for end in 0..smoothed.len() {
        // The longest decreasing subsequence ending at `end`, by brute force over predecessors.
        let mut len = vec![1usize; end + 1];
        for i in 0..=end {
            for j in 0..i {
                if smoothed[i] < smoothed[j] && len[j] + 1 > len[i] {
                    len[i] = len[j] + 1;
                }
            }
        }
        if len[end] > best_len {
            (best_len, best_end) = (len[end], end);
        }
    }
    let start = best_end.saturating_sub(best_len);
    let span = best_end - start;
    assert_eq!(suggested, lrs[start + span / 3 + span / 6]);
    assert_eq!(doc["suggestions"]["valley"].as_f64(), Some(suggested));
    let steepest = doc["suggestions"]["steepest"].as_f64().unwrap();
    assert!(
        out.stdout.contains(&format!(
            "(valley: halfway along the longest fall of the smoothed loss; --suggest steepest: {}",
            pipe::util::rate(steepest)
        )),
        "{}",
        out.stdout
    );
    let png = std::fs::read(out_dir.join("lr_find.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    // An option that sets a run's length is refused before any work.
    let err = common::Pipe::new("lr-find")
        .data(&w.data)
        .arg("--epochs", "5")
        .arg("--out", w.join("refused"))
        .fails();
    assert!(
        err.contains("--epochs sets a training run's length"),
        "{err}"
    );
    assert!(!w.join("refused").exists());
    train("after").ok();
    let (before, after) = (w.run("before"), w.run("after"));
    for f in ["history.json", "predictions.json", "head.safetensors"] {
        assert_eq!(before.bytes(f), after.bytes(f), "{f}");
    }
}

/// `pipe train --extract-shard K/3` in three processes sharing a cache folder, extraction batches
/// of 8: each extracts its whole batches of each split (50 training images, 7 batches: images 1-24,
/// 25-40, 41-50; 10 test images, 2 batches: 1-8, 9-10, none) and writes no run; a shard run again
/// extracts nothing; the `pipe train` that follows assembles the shards, extracts nothing, leaves no
/// shard file, and its cache and run are byte for byte those of a run that extracted everything
/// itself.
#[test]
fn sharded_extraction_fills_the_cache_that_train_then_reads() {
    let w = Workdir::binary_release(10);
    let train = |name: &str| {
        w.train(name)
            .limits(50, 10)
            .epochs(1)
            .batch(10)
            .arg("--extract-batch-size", "8")
    };
    let whole = w.join("whole-cache");
    assert_eq!(extracted(&train("whole").cache(&whole).ok().stderr), 60);
    let parts = [
        ("1 to 24", "1 to 8 of 10: extracted"),
        ("25 to 40", "9 to 10 of 10: extracted"),
        (
            "41 to 50",
            ": none to extract (the 10 images make fewer extraction batches than there are shards)",
        ),
    ];
    for (k, (t, e)) in parts.into_iter().enumerate() {
        let out = train("sharded")
            .arg("--extract-shard", format!("{k}/3"))
            .ok()
            .stdout;
        for line in [
            format!("shard {k}/3: train images {t} of 50: extracted"),
            format!(
                "shard {k}/3: test images{}{e}",
                if e.starts_with(':') { "" } else { " " }
            ),
        ] {
            assert!(out.contains(&line), "{line}\n{out}");
        }
    }
    assert!(!w.runs.join("sharded").exists(), "a shard writes no run");
    let again = train("sharded").arg("--extract-shard", "1/3").ok().stdout;
    assert!(
        again.contains("shard 1/3: train images 25 to 40 of 50: already in the feature cache"),
        "{again}"
    );
    let out = train("after").ok().stderr;
    assert_eq!(extracted(&out), 0, "{out}");
    for says in [
        "features of 50 images assembled from 3 shard files in the feature cache",
        "features of 10 images assembled from 2 shard files in the feature cache",
    ] {
        assert!(out.contains(says), "{says}\n{out}");
    }
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&w.cache), names(&whole), "no shard file left");
    for name in names(&whole) {
        assert!(
            std::fs::read(w.cache.join(&name)).unwrap()
                == std::fs::read(whole.join(&name)).unwrap(),
            "{name}"
        );
    }
    // The same run as one that extracted everything itself.
    for f in ["history.json", "predictions.json"] {
        assert_eq!(w.run("whole").bytes(f), w.run("after").bytes(f), "{f}");
    }
    // Bad uses stop before any work.
    for (args, code, says) in [
        (
            vec!["--extract-shard", "3/3"],
            2,
            "expected K/N with 0 <= K < N",
        ),
        (
            vec!["--extract-shard", "0/2", "--no-cache"],
            1,
            "--no-cache",
        ),
        (vec!["--extract-shard", "0/2", "--resume"], 1, "--resume"),
    ] {
        let mut p = train("bad");
        for pair in args.chunks(2) {
            p = if pair.len() == 2 {
                p.arg(pair[0], pair[1])
            } else {
                p.flag(pair[0])
            };
        }
        let err = p.fails_with(code);
        assert!(err.contains(says), "{says}: {err}");
    }
}
