//! `pipe explain`: Grad-CAM heatmaps of a run's model over images.

use super::{named_files, refuse_named, scan_inputs, Outcome, RunSelection};
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::path::PathBuf;

/// Arguments of `pipe explain`.
#[derive(clap::Args)]
#[command(mut_arg("run", |a| a.help("Run whose model explains: `latest`, a run name in --runs-dir, or a run folder")))]
pub struct ExplainArgs {
    /// Image files and/or folders to explain (folders searched recursively, as `pipe infer` does).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    #[command(flatten)]
    run: RunSelection,
    /// Class to explain, by name (default: each image's predicted class).
    #[arg(long, value_name = "NAME")]
    class: Option<String>,
    /// Folder to write the heatmaps (<image name>.cam.png, with -2, -3, ... after a name already
    /// used) and explain.json into; created if missing.
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
    /// Device: auto = CUDA when libtorch sees a GPU, else CPU.
    #[arg(long, value_enum, default_value_t = pipe::config::TrainDevice::Auto)]
    device: pipe::config::TrainDevice,
}

impl ExplainArgs {
    /// Explains each image, writes its overlay and explain.json, and prints one line per image. An
    /// image inside a folder that cannot be decoded is named and skipped (exit code 3); one named
    /// on the command line is an error (exit code 1) once every other image was explained.
    ///
    /// # Errors
    /// An unusable run, --class or --out; a path that does not exist or holds no image file
    /// (before any work); images named on the command line that could not be explained.
    pub fn run(self) -> Result<Outcome> {
        let files = scan_inputs(&self.images)?;
        let run_dir = self.run.resolve()?;
        // `latest` is a link: the run it points to is what the user wants to see.
        let run_dir = std::fs::canonicalize(&run_dir).unwrap_or(run_dir);
        let explainer = pipe::train::Explainer::open(&run_dir, self.device)?;
        eprintln!(
            "explaining with the run {} ({})",
            run_dir.display(),
            explainer.classes().join(", ")
        );
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
        let named = named_files(&self.images);
        let (mut done, mut skipped, mut named_failed) = (Vec::new(), 0usize, Vec::new());
        let mut used = HashSet::new();
        for (k, path) in files.iter().enumerate() {
            let e = match explainer.explain(path, class) {
                Ok(e) => e,
                Err(err) => {
                    // The error names the file itself when it is the file's fault.
                    let (shown, message) = (path.display().to_string(), err.to_string());
                    let message = message
                        .strip_prefix(&format!("{shown}: "))
                        .unwrap_or(&message);
                    if named.contains(path.as_path()) {
                        named_failed.push(format!("{shown}: {message}"));
                    } else {
                        eprintln!("warning: skipped {shown}: {message}");
                        skipped += 1;
                    }
                    continue;
                }
            };
            let stem = path
                .file_stem()
                .map_or_else(|| format!("image{k}"), |s| s.to_string_lossy().into_owned());
            let png = (1..)
                .map(|n| match n {
                    1 => format!("{stem}.cam.png"),
                    n => format!("{stem}-{n}.cam.png"),
                })
                .find(|name| used.insert(name.clone()))
                .map(|name| self.out.join(name))
                .context("no free file name")?;
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
            let mut entry = serde_json::to_value(&e)?;
            entry["heatmap"] = serde_json::json!(png);
            done.push(entry);
        }
        let not_explained = skipped + named_failed.len();
        pipe::util::write_json_atomic(
            &self.out.join("explain.json"),
            &serde_json::json!({
                "run": run_dir, "method": "Grad-CAM on the last conv block (block5_conv3)",
                "images": done, "skipped": not_explained,
            }),
        )?;
        if not_explained > 0 {
            eprintln!(
                "{not_explained} of {} skipped",
                pipe::util::plural(files.len(), "image")
            );
        }
        refuse_named(&named_failed)?;
        Ok(Outcome::Skipped(skipped))
    }
}
