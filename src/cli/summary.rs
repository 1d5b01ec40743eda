//! `pipe summary`: the layer table of the network, like Keras' `model.summary()`.

use anyhow::Result;
use pipe::arch::{Arch, SummaryRow};
use pipe::util::thousands;

/// Arguments of `pipe summary`.
#[derive(clap::Args)]
pub struct SummaryArgs {
    /// Input image size, pixels (a multiple of 32).
    #[arg(long, default_value_t = 32)]
    input_size: usize,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
}

impl SummaryArgs {
    /// Prints one row per layer, then the parameter totals.
    ///
    /// # Errors
    /// An input size that is not a positive multiple of 32, or fewer than 2 classes.
    pub fn run(self) -> Result<()> {
        if self.input_size == 0 || !self.input_size.is_multiple_of(32) || self.classes < 2 {
            anyhow::bail!(
                "--input-size must be a positive multiple of 32 and --classes at least 2"
            );
        }
        let rows = Arch::vgg16_transfer(self.input_size, self.classes).summary();
        println!(
            "{:<14} {:<13} {:<16} {:>12}  trainable",
            "layer", "type", "output shape", "parameters"
        );
        println!("{}", "-".repeat(70));
        for r in &rows {
            let dims: Vec<String> = r.output_shape.iter().map(|d| d.to_string()).collect();
            println!(
                "{:<14} {:<13} {:<16} {:>12}  {}",
                r.name,
                r.kind,
                format!("(N, {})", dims.join(", ")),
                thousands(r.parameters),
                if r.trainable { "yes" } else { "no" }
            );
        }
        let (head, base): (Vec<&SummaryRow>, Vec<&SummaryRow>) =
            rows.iter().partition(|r| r.trainable);
        let total = |rows: &[&SummaryRow]| rows.iter().map(|r| r.parameters).sum::<usize>();
        let (head, base) = (total(&head), total(&base));
        println!("{}", "-".repeat(70));
        println!("Total params: {}", thousands(base + head));
        println!("Trainable params (dense head): {}", thousands(head));
        println!(
            "Non-trainable params (frozen VGG16 base): {}",
            thousands(base)
        );
        Ok(())
    }
}
