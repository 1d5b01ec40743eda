//! `pipe explain`: Grad-CAM heatmaps of a run's model over images.

use super::{Outcome, RunSelection};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Arguments of `pipe explain`.
#[derive(clap::Args)]
#[command(mut_arg("run", |a| a.help("Run whose model explains: `latest`, a run name in --runs-dir, or a run folder")))]
pub struct ExplainArgs {
    /// Image files to explain.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    #[command(flatten)]
    run: RunSelection,
    /// Class to explain, by name (default: each image's predicted class).
    #[arg(long, value_name = "NAME")]
    class: Option<String>,
    /// Folder to write the heatmaps (<image name>.cam.png) and explain.json into; created if missing.
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
    /// Device: auto = CUDA when libtorch sees a GPU, else CPU.
    #[arg(long, value_enum, default_value_t = pipe::config::TrainDevice::Auto)]
    device: pipe::config::TrainDevice,
}

impl ExplainArgs {
    /// Explains each image, writes its overlay and explain.json, and prints one line per image. An
    /// image that cannot be decoded is named and skipped (exit code 3).
    ///
    /// # Errors
    /// An unusable run, --class or --out.
    pub fn run(self) -> Result<Outcome> {
        let run_dir = self.run.resolve()?;
        let explainer = pipe::train::Explainer::open(&run_dir, self.device)?;
        let class = match &self.class {
            Some(name) => Some(
                explainer
                    .classes()
                    .iter()
                    .position(|c| c == name)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--class {name}: the run's classes are {}",
                            explainer.classes().join(", ")
                        )
                    })?,
            ),
            None => None,
        };
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("cannot create {}", self.out.display()))?;
        let (mut done, mut skipped) = (Vec::new(), 0usize);
        for (k, path) in self.images.iter().enumerate() {
            let e = match explainer.explain(path, class) {
                Ok(e) => e,
                Err(err) => {
                    // The error names the file itself when it is the file's fault.
                    let (shown, message) = (path.display().to_string(), err.to_string());
                    let message = message
                        .strip_prefix(&format!("{shown}: "))
                        .unwrap_or(&message);
                    eprintln!("warning: skipped {shown}: {message}");
                    skipped += 1;
                    continue;
                }
            };
            let stem = path
                .file_stem()
                .map_or_else(|| format!("image{k}"), |s| s.to_string_lossy().into_owned());
            let png = self.out.join(format!("{stem}.cam.png"));
            let (pixels, side) = pipe::train::overlay(&e);
            let image = image::RgbImage::from_raw(side as u32, side as u32, pixels)
                .context("overlay of the wrong size")?;
            let mut encoded = std::io::Cursor::new(Vec::new());
            image.write_to(&mut encoded, image::ImageFormat::Png)?;
            pipe::util::write_atomic(&png, |f| f.write_all(encoded.get_ref()))?;
            println!(
                "{}\t{} ({:.3}; predicted {})\t{}",
                path.display(),
                e.class,
                e.probability,
                e.predicted,
                png.display()
            );
            done.push(e);
        }
        pipe::util::write_json_atomic(
            &self.out.join("explain.json"),
            &serde_json::json!({
                "run": run_dir, "method": "Grad-CAM on the last conv block (block5_conv3)",
                "images": done, "skipped": skipped,
            }),
        )?;
        if skipped > 0 {
            eprintln!(
                "{skipped} of {} skipped",
                pipe::util::plural(self.images.len(), "image")
            );
        }
        Ok(Outcome::Skipped(skipped))
    }
}
