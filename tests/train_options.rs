//! Head-training options beyond the seed recipe, on real weights (made by `make setup`) and generated
//! data: Adam, cosine schedule, a validation split carved from the training images (stratified, and
//! disjoint from training), early stopping (when it must stop and when it must not), best-epoch
//! keeping, and `--resume` ending exactly like an uninterrupted run with all of them on; fine-tuning
//! the last conv layers (`--unfreeze`, `--augment`, head warm-up); what `--preset finetune` sets.
#![cfg(feature = "train")]

mod common;

use common::{
    assert_contains, comparable_precision, png, safetensors_metadata, tensors, weights, Epoch,
    Pipe, Workdir,
};
use serde_json::{json, Value};
use std::path::Path;

/// The epoch after which `--patience p` ends a run whose full history (trained without early
/// stopping) is `h`: the first epoch whose lowest validation loss so far (strictly lower than every
/// earlier one) is `p` or more epochs old. `None`: it runs to the end.
fn expected_stop(h: &[Epoch], p: usize) -> Option<usize> {
    let mut best = 0;
    for (i, e) in h.iter().enumerate() {
        if e.val_loss < h[best].val_loss || i == 0 {
            best = i;
        }
        if i - best >= p {
            return Some(i + 1);
        }
    }
    None
}

/// The longest run of epochs without a new lowest validation loss in `h`.
fn longest_wait(h: &[Epoch]) -> usize {
    (1..=h.len())
        .rev()
        .find(|&p| expected_stop(h, p).is_some())
        .unwrap_or(0)
}

#[test]
fn adam_cosine_val_split_early_stopping_and_resume() {
    let w = Workdir::binary_release(40);
    let train = |name: &str, lr: &str, schedule: &str, patience: &str| {
        w.train(name)
            .limits(150, 40)
            .epochs(8)
            .batch(16)
            .arg("--optimizer", "adam")
            .lr(lr)
            .arg("--schedule", schedule)
            .arg("--val-split", "0.2")
            .arg("--patience", patience)
            .flag("--restore-best")
    };
    let a = train("a", "3e-4", "cosine", "2").ok();
    assert!(
        a.stderr.contains("Adam lr 3e-4"),
        "config echo: {}",
        a.stderr
    );
    assert!(
        a.stderr.contains("30 of the training images held out"),
        "{}",
        a.stderr
    );
    let run = w.run("a");
    let config = run.config();
    assert_eq!(config["optimizer"], "adam");
    assert_eq!(config["schedule"], "cosine");
    // 150 training images, 15 per class: round(0.2 * 15) = 3 per class go to validation.
    assert_eq!(config["val_images"], 30);
    assert_eq!(config["train_images"], 120);
    assert_eq!(config["test_images"], 40);

    // Early stopping ends the run exactly when its rule says (here: never, all 8 epochs run).
    let h = run.history();
    assert_eq!(h.len(), expected_stop(&h, 2).unwrap_or(8), "{h:?}");
    assert!(!a.stderr.contains("early stopping after"), "{}", a.stderr);
    let best_i = (0..h.len())
        .min_by(|&i, &j| h[i].val_loss.total_cmp(&h[j].val_loss))
        .unwrap();
    // best.safetensors holds the epoch with the lowest validation loss, and with --restore-best the
    // final head is that epoch's.
    let meta = safetensors_metadata(&run.file("best.safetensors"));
    assert_eq!(meta["epoch"], (best_i + 1).to_string());
    assert_eq!(
        run.tensors("best.safetensors"),
        run.tensors("head.safetensors")
    );
    // Validation is not the test split: predictions.json covers the 40 test images.
    assert_eq!(run.predictions().items.len(), 40);

    // Interrupted after epoch 2 and resumed: the same history and head as the uninterrupted run.
    train("i", "3e-4", "cosine", "2")
        .arg("--interrupt-after-epoch", "2")
        .fails();
    let err = w.resume().name("i").ok().stderr;
    assert!(err.contains("continuing after epoch 2 of 8"), "{err}");
    let resumed = w.run("i");
    for f in ["history.json", "predictions.json"] {
        assert_eq!(run.bytes(f), resumed.bytes(f), "{f}");
    }
    for f in ["head.safetensors", "best.safetensors"] {
        assert_eq!(run.tensors(f), resumed.tensors(f), "{f}");
    }

    // A learning rate too high for this data: the validation loss stops improving. Trained without
    // --patience, all 8 epochs run; with --patience p the run ends where the rule says on that
    // history, with the same epochs up to there (early stopping ends training, it does not change
    // it), and a patience longer than the longest wait never stops it.
    let full = train("es-full", "1e-2", "constant", "1")
        .without("--patience", true)
        .ok();
    assert!(
        !full.stderr.contains("early stopping after"),
        "{}",
        full.stderr
    );
    let hf = w.run("es-full").history();
    assert_eq!(hf.len(), 8);
    let wait = longest_wait(&hf);
    assert!(
        (1..7).contains(&wait),
        "this setting is meant to stop early: {hf:?}"
    );
    for p in std::collections::BTreeSet::from([1, wait, wait + 1]) {
        let name = format!("es-{p}");
        let out = train(&name, "1e-2", "constant", &p.to_string()).ok();
        let h = w.run(&name).history();
        assert_eq!(h[..], hf[..h.len()], "patience {p}");
        match expected_stop(&hf, p) {
            Some(stop) => {
                assert_eq!(h.len(), stop, "patience {p}: {hf:?}");
                let best = (0..stop)
                    .min_by(|&i, &j| hf[i].val_loss.total_cmp(&hf[j].val_loss))
                    .unwrap();
                let line = format!(
                    "early stopping after epoch {stop}: the validation loss has not improved for {p} \
                     epoch{} (best: epoch {})",
                    if p == 1 { "" } else { "s" },
                    best + 1
                );
                assert!(out.stderr.contains(&line), "{line}: {}", out.stderr);
            }
            None => {
                assert_eq!(h.len(), 8, "patience {p}");
                assert!(
                    !out.stderr.contains("early stopping after"),
                    "{}",
                    out.stderr
                );
            }
        }
    }

    // The export of such a run verifies like any other.
    let onnx = w.join("a.onnx");
    w.export_verified("a", &onnx, 40);
    // float16 weights: about half the file, verified within the looser stated tolerance.
    let half = w.join("a16.onnx");
    let out = w.export("a", &half).flag("--fp16").ok();
    assert!(out.stdout.contains("(tolerance 1e-2)"), "{}", out.stdout);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&half) * 100 < size(&onnx) * 51,
        "{} vs {}",
        size(&half),
        size(&onnx)
    );
    let out = Pipe::inspect(&half).ok();
    assert!(out.stdout.contains("float16"), "{}", out.stdout);
    // Measured here, not taken from the exporter's message: on 40 images, the float16 file's
    // probabilities within 1e-2 of the float32 file's (onnxruntime), and the same labels.
    let dir = w.join("imgs");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<std::path::PathBuf> = (0..40u32)
        .map(|i| {
            let f = dir.join(format!("{i:02}.png"));
            png(&f, 32, 32, |x, y| {
                [
                    (x * 8 + i * 5) as u8,
                    (y * 8 + i * 11) as u8,
                    ((x ^ y) * 8 + i) as u8,
                ]
            });
            f
        })
        .collect();
    let float = Pipe::infer(&onnx).backend("ort").paths(&files).infer_json();
    let halved = Pipe::infer(&half).backend("ort").paths(&files).infer_json();
    assert_eq!(float.predictions.len(), files.len());
    let mut worst = 0f32;
    for (f, h) in float.predictions.iter().zip(&halved.predictions) {
        assert_eq!((&f.path, f.class_index), (&h.path, h.class_index));
        assert!(f.error.is_none(), "{}", f.path);
        for (a, b) in f.probabilities.iter().zip(&h.probabilities) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst <= 1e-2, "float16 moved a probability by {worst}");
    assert!(worst > 0.0, "float16 weights changed nothing?");
}

/// `--val-split`: per class, round(fraction × the class's images) (at least one) are held out, and
/// none of them is trained on. The classes have 10, 12, …, 28 images: per class at 0.25 that holds
/// out 3+3+4+4+5+5+6+6+7+7 = 50, where a share of the whole set would be round(47.5) = 48. The images
/// are noise with arbitrary class folders, so a head can only learn them by heart: it does (training
/// accuracy near 1), and on the held-out images it stays near chance; had validation overlapped
/// training, validation accuracy would follow training accuracy.
#[test]
fn val_split_holds_out_a_stratified_share_that_is_not_trained_on() {
    let w = Workdir::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for c in 0..10 {
        for (split, n) in [("train", 10 + 2 * c), ("test", 2)] {
            let dir = w.data.join(split).join(format!("class{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                // 4x4 blocks of 8x8 pixels, each of a random colour.
                let blocks: Vec<u8> = (0..4 * 4 * 3).map(|_| noise() as u8).collect();
                png(&dir.join(format!("{i}.png")), 32, 32, |x, y| {
                    let k = ((y / 8 * 4 + x / 8) * 3) as usize;
                    [blocks[k], blocks[k + 1], blocks[k + 2]]
                });
            }
        }
    }
    let out = w
        .train("v")
        .limits(0, 0)
        .epochs(60)
        .batch(16)
        .arg("--optimizer", "adam")
        .lr("1e-3")
        .arg("--val-split", "0.25")
        .ok();
    assert!(
        out.stderr
            .contains("validation: 50 of the training images held out (--val-split 0.25)"),
        "{}",
        out.stderr
    );
    // The test images are noise too (1 of 20 right here): the run says it learned nothing general.
    assert!(
        out.stderr.contains("is at chance level")
            && out
                .stderr
                .contains("`pipe lr-find` with the same data and training options suggests a rate"),
        "{}",
        out.stderr
    );
    let config = w.run("v").config();
    assert_eq!(
        [
            &config["train_images"],
            &config["val_images"],
            &config["test_images"]
        ],
        [&json!(140), &json!(50), &json!(20)]
    );
    // Learned by heart (chance: loss ln 10 = 2.30, accuracy 0.1), and no better than chance on the
    // held-out images (which, had they been trained on, would score better than the training images:
    // validation runs without dropout).
    let last = w.run("v").history().pop().unwrap();
    assert!(last.loss < 1.0 && last.accuracy > 0.7, "{last:?}");
    assert!(last.val_loss > 2.3 && last.val_accuracy < 0.3, "{last:?}");
}

/// `--preset finetune` sets the whole recipe (what `pipe train --help` lists), and options given on
/// the command line win over it.
#[test]
fn preset_finetune_sets_its_recipe_and_command_line_options_override_it() {
    let w = Workdir::binary_release(10);
    let out = w
        .train("ft")
        .arg("--preset", "finetune")
        .limits(20, 10)
        .epochs(1)
        .lr("0.001")
        .arg("--patience", "2")
        .ok();
    for part in [
        "last 13 conv layers fine-tuned + dense head, augmented images",
        "SGD lr 1e-3 momentum 0.9 weight decay 5e-4, one-cycle schedule, batch 128, as many of \
         1 epoch as fit in 70 min (--time-budget), early stopping (patience 2), restore best",
        "validation 10% of train",
        "head warm-up: 5 epochs",
    ] {
        assert!(out.stderr.contains(part), "{part}: {}", out.stderr);
    }
    let config = w.run("ft").config();
    let recipe = json!({
        "unfreeze": 13, "augment": true, "head_epochs": 5, "head_lr": 0.001, "optimizer": "sgd",
        "momentum": 0.9, "weight_decay": 0.0005, "schedule": "onecycle", "batch_size": 128,
        "val_split": 0.1, "restore_best": true, "time_budget": 4200.0,
        // given on the command line:
        "epochs": 1, "lr": 0.001, "patience": 2, "train_limit": 20, "test_limit": 10,
    });
    for (k, v) in recipe.as_object().unwrap() {
        assert_eq!(&config[k], v, "{k}");
    }
    // Without the preset, the same command line is a frozen-base run with the seed's defaults.
    w.train("plain").limits(20, 10).epochs(1).ok();
    let plain = w.run("plain").config();
    for (k, v) in [
        ("unfreeze", json!(0)),
        ("augment", json!(false)),
        ("weight_decay", json!(0.0)),
        ("schedule", json!("constant")),
        ("val_split", json!(0.0)),
        ("patience", Value::Null),
        ("restore_best", json!(false)),
    ] {
        assert_eq!(plain[k], v, "{k}");
    }
}

/// `--time-budget`: a fine-tuning run of up to 200 epochs with a budget of 30 s plans the epochs
/// that fit from its first batches' speed, lays the one-cycle schedule over them (the last epoch
/// ends at the schedule's floor, lr/250,000, unless the guard stopped it first, which it then says),
/// records them in config.json, and the whole `pipe train` ends within the budget.
#[test]
fn a_time_budget_plans_the_epochs_that_fit_and_the_run_ends_within_it() {
    let w = Workdir::binary_release(40);
    let budget = 30.0;
    let t0 = std::time::Instant::now();
    let err = w
        .train("b")
        .limits(200, 40)
        .epochs(200)
        .batch(20)
        .lr("1e-4")
        .arg("--unfreeze", "13")
        .arg("--head-epochs", "1")
        .arg("--schedule", "onecycle")
        .arg("--time-budget", "30s")
        .ok()
        .stderr;
    let wall = t0.elapsed().as_secs_f64();
    assert!(
        wall <= budget,
        "pipe train took {wall:.1} s of its 30 s budget:\n{err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("time budget 30 s: "))
        .unwrap_or_else(|| panic!("no plan line:\n{err}"));
    let planned: usize = line["time budget 30 s: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((1..200).contains(&planned), "{line}");
    assert!(
        line.contains(&format!("{planned} of 200 epochs fit")),
        "{line}"
    );
    let run = w.run("b");
    let config = run.config();
    assert_eq!(config["epochs"], planned, "config.json records the plan");
    assert_eq!(config["time_budget"], budget);
    // A frozen-base run has no budget, and says so rather than ignore the option.
    let frozen = w
        .train("f")
        .limits(20, 10)
        .epochs(1)
        .batch(10)
        .arg("--time-budget", "30s")
        .ok()
        .stderr;
    assert_contains(
        &frozen,
        &["warning: --time-budget plans the epochs of fine-tuning (--unfreeze N)"],
    );
    assert!(w.run("f").config().get("time_budget").is_none());
    let history: Value = serde_json::from_slice(&run.bytes("history.json")).unwrap();
    let tuned: Vec<&Value> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["phase"] == "fine-tune")
        .collect();
    assert!(!tuned.is_empty() && tuned.len() <= planned);
    if tuned.len() == planned {
        // The schedule ran its course over the planned epochs: the last step is at its floor.
        let last = tuned.last().unwrap()["lr_end"].as_f64().unwrap();
        assert!(last < 1e-4 / 1000.0, "last rate {last}");
    } else {
        assert!(err.contains("time budget: stopping before epoch"), "{err}");
    }
}

/// A `--preset finetune` run (all 13 convs, augmentation, one-cycle, weight decay, label smoothing,
/// early stopping with best-epoch restore, bf16 where the CPU has AMX) interrupted in its fine-tuning
/// phase and resumed ends byte-identical to the uninterrupted run: the same history, predictions, head
/// and base. Both runs get the precision auto picks without a timing ([`comparable_precision`]).
#[test]
fn preset_finetune_interrupted_and_resumed_ends_like_an_uninterrupted_run() {
    let w = Workdir::binary_release(20);
    let train = |name: &str| {
        w.train(name)
            .arg("--preset", "finetune")
            .limits(60, 20)
            .epochs(3)
            .batch(20)
            .arg("--head-epochs", "1")
            .arg("--label-smoothing", "0.1")
            .arg("--precision", comparable_precision())
    };
    train("a").ok();
    let err = train("i").arg("--interrupt-after-epoch", "2").fails();
    assert!(err.contains("interrupted after epoch 2"), "{err}");
    w.resume().name("i").ok();
    let (run, resumed) = (w.run("a"), w.run("i"));
    assert_eq!(run.history().len(), 4, "1 warm-up and 3 fine-tuning epochs");
    for f in ["history.json", "predictions.json"] {
        assert_eq!(run.bytes(f), resumed.bytes(f), "{f}");
    }
    for f in ["head.safetensors", "base.safetensors"] {
        assert_eq!(run.tensors(f), resumed.tensors(f), "{f}");
    }
}

/// `pipe lr-find --preset finetune` sweeps the fine-tuning itself: the head warmed up first, then
/// the last convs and the head on augmented images, the rates exponential from --start-lr, a
/// suggestion inside them; and it leaves no trace: a fine-tuning run trained after it has the
/// history, predictions and weights of one trained before it (both in [`comparable_precision`]).
#[test]
fn lr_find_sweeps_the_fine_tuning_and_leaves_no_trace() {
    let w = Workdir::binary_release(20);
    let train = |name: &str| {
        w.train(name)
            .arg("--preset", "finetune")
            .limits(60, 20)
            .epochs(1)
            .batch(20)
            .arg("--head-epochs", "1")
            .arg("--precision", comparable_precision())
    };
    train("before").ok();
    let out_dir = w.join("lr");
    let out = Pipe::new("lr-find")
        .arg("--device", "cpu")
        .arg("--preset", "finetune")
        .data(&w.data)
        .weights(weights())
        .cache(&w.cache)
        .limits(60, 20)
        .batch(20)
        .arg("--head-epochs", "1")
        .arg("--steps", "20")
        .arg("--out", &out_dir)
        .ok();
    for says in [
        "Warm-up epoch 1/1",
        "fine-tuning the last 13 conv layers and the head in ",
    ] {
        assert!(out.stderr.contains(says), "{says}\n{}", out.stderr);
    }
    // The precision is named as `pipe train` names it.
    assert!(
        ["float32", "bf16 mixed precision", "precision auto"]
            .iter()
            .any(|p| out.stderr.contains(&format!("and the head in {p} ("))),
        "{}",
        out.stderr
    );
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("lr_find.json")).unwrap()).unwrap();
    assert_eq!(
        (doc["unfreeze"].as_u64(), doc["head_epochs"].as_u64()),
        (Some(13), Some(1))
    );
    let points = doc["points"].as_array().unwrap();
    let lrs: Vec<f64> = points.iter().map(|p| p["lr"].as_f64().unwrap()).collect();
    assert!((lrs[0] - 1e-7).abs() < 1e-12, "{lrs:?}");
    let ratio = (10f64 / 1e-7).powf(1.0 / 19.0);
    for pair in lrs.windows(2) {
        assert!((pair[1] / pair[0] / ratio - 1.0).abs() < 1e-9);
    }
    assert!(std::fs::read(out_dir.join("lr_find.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    train("after").ok();
    let (before, after) = (w.run("before"), w.run("after"));
    for f in ["history.json", "predictions.json"] {
        assert_eq!(before.bytes(f), after.bytes(f), "{f}");
    }
    for f in ["head.safetensors", "base.safetensors"] {
        assert_eq!(before.tensors(f), after.tensors(f), "{f}");
    }
}

/// `--precision bf16` asked for explicitly, on whatever CPU runs the tests (libtorch computes bf16
/// without AVX512_BF16, slowly): a small fine-tuning run trains in bf16, an interrupted copy resumes
/// to the same bytes, and the export verifies against tch's probabilities.
#[test]
fn bf16_fine_tuning_trains_resumes_and_exports_on_any_cpu() {
    let w = Workdir::binary_release(20);
    let train = |name: &str| {
        w.train(name)
            .limits(40, 20)
            .epochs(2)
            .batch(10)
            .arg("--unfreeze", "1")
            .arg("--head-epochs", "1")
            .arg("--precision", "bf16")
            .lr("1e-5")
    };
    let err = train("a").ok().stderr;
    let first = err
        .lines()
        .find(|l| l.starts_with("pipe train: "))
        .unwrap_or_default();
    assert!(first.contains("bf16 mixed precision"), "{first}");
    let run = w.run("a");
    assert_eq!(run.config()["precision"], "bf16");
    assert_eq!(run.history().len(), 3, "1 warm-up and 2 fine-tuning epochs");
    train("i").arg("--interrupt-after-epoch", "2").fails();
    w.resume().name("i").ok();
    let resumed = w.run("i");
    assert_eq!(run.bytes("history.json"), resumed.bytes("history.json"));
    for f in ["head.safetensors", "base.safetensors"] {
        assert_eq!(run.tensors(f), resumed.tensors(f), "{f}");
    }
    w.export_verified("a", w.join("a.onnx"), 20);
}

#[test]
fn bad_training_options_are_refused_before_any_work() {
    let w = Workdir::new();
    for (args, needle) in [
        (vec!["--val-split", "1.5"], "--val-split"),
        (vec!["--val-split=-0.1"], "--val-split"),
        (vec!["--patience", "0"], "--patience"),
        (vec!["--optimizer", "rmsprop"], "invalid value 'rmsprop'"),
        (vec!["--schedule", "linear"], "invalid value 'linear'"),
    ] {
        let out = Pipe::new("train").runs(&w.runs).paths(&args).output();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!w.runs.exists(), "nothing written for {args:?}");
    }
}

#[test]
fn unfreeze_fine_tunes_the_last_convs_exports_and_resumes() {
    let w = Workdir::binary_release(40);
    let train = |name: &str| {
        w.train(name)
            .limits(100, 40)
            .epochs(2)
            .batch(20)
            .arg("--unfreeze", "2")
            .flag("--augment")
            .arg("--head-epochs", "2")
            .lr("1e-5")
    };
    let err = train("a").ok().stderr;
    assert!(err.contains("last 2 conv layers fine-tuned"), "{err}");
    assert!(err.contains("head warm-up: 2 epochs"), "{err}");
    let run = w.run("a");
    let config = run.config();
    assert_eq!(config["unfreeze"], 2);
    assert_eq!(config["augment"], true);
    // --precision auto: bf16 mixed precision where the CPU has AMX (so the export and resume checks
    // below cover bf16 training there; bf16_fine_tuning_… covers it everywhere); with AVX512_BF16
    // alone, the faster of the two in a timing printed before fine-tuning and recorded; float32
    // elsewhere. Named in the configuration line.
    let cpu = pipe::cpu::CpuFeatures::detect();
    let first = err
        .lines()
        .find(|l| l.starts_with("pipe train: "))
        .unwrap_or_default();
    if cpu.avx512_bf16 && !cpu.amx_bf16 {
        let timing = err
            .lines()
            .find(|l| l.starts_with("precision auto: "))
            .unwrap_or_else(|| panic!("no timing line in {err}"));
        let kept = if timing.ends_with("fine-tuning in float32") {
            "fp32"
        } else {
            "bf16"
        };
        assert_eq!(config["precision"], kept, "{timing}");
        assert!(first.contains("precision auto (auto: "), "{first}");
    } else {
        let bf16 = cpu.amx_bf16;
        assert_eq!(config["precision"], if bf16 { "bf16" } else { "fp32" });
        assert!(!err.contains("precision auto: "), "{err}");
        assert!(
            first.contains(if bf16 {
                "bf16 mixed precision (auto: "
            } else {
                "float32 (auto: "
            }),
            "{first}"
        );
    }
    // history.json: the 2 warm-up epochs, then the 2 fine-tuning epochs, with phase and learning rate.
    let history: Value = serde_json::from_slice(&run.bytes("history.json")).unwrap();
    let phases: Vec<(String, f64)> = history
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
    assert!(run.dir.join("lr.png").is_file());

    // base.safetensors holds the whole base: the two last convs changed, the others are ImageNet's.
    let tuned = run.tensors("base.safetensors");
    let imagenet = tensors(&weights());
    assert_eq!(tuned.len(), 26);
    for (name, bytes) in &tuned {
        let original = &imagenet.iter().find(|(n, _)| n == name).unwrap().1;
        let trained = name.contains("block5_conv2") || name.contains("block5_conv3");
        assert_eq!(bytes != original, trained, "{name}");
    }

    // The export uses the tuned base and verifies against tch's predictions; evaluate agrees with the
    // last epoch's validation (= test split) accuracy.
    let onnx = w.join("a.onnx");
    w.export_verified("a", &onnx, 40);
    let last = run.history().last().unwrap().val_accuracy;
    let ev: Value = serde_json::from_str(&w.evaluate("a").format("json").ok().stdout).unwrap();
    assert!((ev["report"]["accuracy"].as_f64().unwrap() - last).abs() < 1e-6);

    // Interrupted after epoch 1 and resumed: identical to the uninterrupted run (in the precision
    // that run kept: a timed auto may pick the other one in another run).
    let kept = config["precision"].as_str().unwrap().to_string();
    train("i")
        .arg("--precision", &kept)
        .arg("--interrupt-after-epoch", "1")
        .fails();
    w.resume().name("i").ok();
    let resumed = w.run("i");
    assert_eq!(run.bytes("history.json"), resumed.bytes("history.json"));
    for f in ["head.safetensors", "base.safetensors"] {
        assert_eq!(run.tensors(f), resumed.tensors(f), "{f}");
    }

    // --augment without --unfreeze, and more convs than VGG16 has, are refused before any work.
    let plain = Pipe::new("train").runs(&w.runs);
    let err = plain.clone().flag("--augment").name("x").fails();
    assert!(err.contains("--augment needs --unfreeze"), "{err}");
    let err = plain.arg("--unfreeze", "14").name("y").fails();
    assert!(err.contains("--unfreeze must be between 0 and 13"), "{err}");
    assert!(!w.runs.join("x").exists() && !w.runs.join("y").exists());
}

/// `--device cuda`: trains on the GPU and the export still verifies against tch's (GPU) probabilities.
/// Ignored by `cargo test`; `make test` runs it where `nvidia-smi` sees a GPU.
#[test]
#[ignore = "needs an NVIDIA GPU and a CUDA build of libtorch (make test runs it where nvidia-smi sees a GPU)"]
fn cuda_training_when_a_gpu_is_present() {
    assert!(
        tch::Cuda::is_available(),
        "libtorch sees no CUDA device (device count {}, CUDA build {}): run this test on a GPU machine",
        tch::Cuda::device_count(),
        tch::utils::has_cuda()
    );
    let w = Workdir::binary_release(40);
    let mut results = Vec::new();
    for device in ["cpu", "cuda"] {
        let err = w
            .train(device)
            .limits(150, 40)
            .epochs(3)
            .batch(16)
            .arg("--device", device)
            .no_cache()
            .ok()
            .stderr;
        let on = if device == "cuda" {
            "on cuda:0"
        } else {
            "on cpu"
        };
        assert!(err.contains(on), "{err}");
        results.push(w.run(device).history().last().unwrap().val_accuracy);
    }
    // Same data and seed; GPU kernels round differently, so the accuracies are close, not equal.
    assert!((results[0] - results[1]).abs() <= 0.1, "{results:?}");
    let onnx = w.join("cuda.onnx");
    w.export_verified("cuda", &onnx, 40);
}
