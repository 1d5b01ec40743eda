//! Where tract spends its time on an exported model, operator by operator.
//!
//! ```text
//! cargo run --release --example tract_profile -- MODEL.onnx [SIZE] [BATCH] [ROUNDS]
//! ```
//!
//! Loads `MODEL.onnx` with the input fixed to `BATCH x SIZE x SIZE x 3` (float32 NHWC, synthetic
//! pixels), optimises it as tract does for `pipe infer`, runs it once to warm up and then `ROUNDS`
//! times on one thread, timing each node of the plan. Prints the throughput (images/s, one thread)
//! and every node that took at least 0.3% of the time, slowest first. `TRACT_*` knobs in the
//! environment apply (for example `TRACT_DISABLE_DIRECT_SPATIAL=true`).

use ndarray::Array4;
use std::collections::BTreeMap;
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{eval, SimpleState};

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(model) = args.get(1) else {
        eprintln!("usage: tract_profile MODEL.onnx [SIZE=32] [BATCH=64] [ROUNDS=2]");
        std::process::exit(2);
    };
    let arg = |i: usize, default: usize| -> usize {
        args.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("argument {i} must be a whole number, got {s:?}");
                std::process::exit(2)
            })
        })
    };
    let (size, batch, rounds) = (arg(2, 32), arg(3, 64), arg(4, 2).max(1));
    let plan = tract_onnx::onnx()
        .model_for_path(model)?
        .with_input_fact(0, f32::fact([batch, size, size, 3]).into())?
        .into_optimized()?
        .into_runnable()?;
    let pixels = Array4::<f32>::from_shape_fn((batch, size, size, 3), |(n, y, x, c)| {
        ((n * 7 + y * 3 + x * 5 + c) % 256) as f32
    });
    let input: Tensor = pixels.into();
    let mut times: BTreeMap<usize, (String, f64)> = BTreeMap::new();
    for round in 0..=rounds {
        let mut state = SimpleState::new(&plan)?;
        state.run_plan_with_eval(
            tvec!(input.clone().into()),
            |ctx, op_state, node, inputs| {
                let start = Instant::now();
                let out = eval(ctx, op_state, node, inputs);
                if round > 0 {
                    let entry = times
                        .entry(node.id)
                        .or_insert_with(|| (format!("{} ({})", node.name, node.op().name()), 0.0));
                    entry.1 += start.elapsed().as_secs_f64();
                }
                out
            },
        )?;
    }
    let total: f64 = times.values().map(|t| t.1).sum();
    println!(
        "{model}: {size}x{size}, batch {batch}: {:.1} images/s on one thread ({:.1} ms per image)",
        (rounds * batch) as f64 / total,
        1e3 * total / (rounds * batch) as f64
    );
    let mut rows: Vec<_> = times
        .into_values()
        .filter(|t| t.1 / total >= 0.003)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, t) in rows {
        println!("{:6.2}%  {name}", 100.0 * t / total);
    }
    Ok(())
}
