//! The images of a run: the dataset's layout, the split list (made from the data when a run starts,
//! read back from the run's `split.json` by `--resume` and `evaluate`), the decoded splits, and the
//! image files that could not be decoded.
//!
//! Every split is decoded with the run's [`ImageSpec`] ([`run_spec`]: input size, resize policy,
//! bilinear filter, DCT-scaled JPEG decoding), the spec `pipe infer` applies to an exported model.

use crate::config::TrainConfig;
use crate::data::{
    DataLayout, ImageSpec, LoadedSplit, OnError, SkippedFile, SplitList, SplitPart, SPLIT_FILE,
};
use crate::error::Result;
use crate::events::{EventSink, Warning};
use std::path::{Path, PathBuf};

/// File of a run that lists the image files training skipped (a JSON array of
/// [`SkippedFile`]s, empty when none was).
pub const SKIPPED_FILE: &str = "skipped.json";

/// How image files become the network input of the run `config` describes: its input size and
/// resize policy, bilinear, JPEGs decoded at reduced size where that loses nothing.
pub fn run_spec(config: &TrainConfig) -> ImageSpec {
    ImageSpec::new(config.input_size, config.resize)
}

/// The layout of a split list, as detected when the list was made.
pub fn list_layout(list: &SplitList) -> DataLayout {
    DataLayout {
        kind: list.layout,
        root: list.root.clone(),
    }
}

/// The split list kept in the run folder `run_dir` (`split.json`), when there is one: what a resumed
/// run and `evaluate` read back.
///
/// # Errors
/// As [`SplitList::read`].
pub fn read_list(run_dir: &Path) -> Result<Option<SplitList>> {
    let path = run_dir.join(SPLIT_FILE);
    path.is_file().then(|| SplitList::read(&path)).transpose()
}

/// The split list of `config`'s data in `layout`, with its shares, seed and limits; what the folder
/// scan skipped goes to `events` as warnings, one per folder.
///
/// # Errors
/// As [`SplitList::build`].
pub fn build_list(
    layout: &DataLayout,
    config: &TrainConfig,
    events: &dyn EventSink,
) -> Result<SplitList> {
    let (list, skipped) = SplitList::build(layout, &config.split_options())?;
    let folders = [
        layout.train_dir(),
        layout.validation_dir(),
        layout.held_out_dir(),
    ];
    let folders: Vec<PathBuf> = match folders {
        [None, ..] => vec![layout.root.clone()],
        dirs => dirs.iter().flatten().map(|d| layout.root.join(d)).collect(),
    };
    for dir in folders {
        for message in skipped.within(&dir).warnings() {
            events.warn(Warning::Folder {
                dir: dir.clone(),
                message,
            });
        }
    }
    Ok(list)
}

/// Reports each of `skipped` to `events` ([`Warning::Skipped`]).
pub fn report_skipped(skipped: &[SkippedFile], events: &dyn EventSink) {
    for s in skipped {
        events.warn(Warning::Skipped(s.clone()));
    }
}

/// Labels and names of one split's images, without pixels.
#[derive(Debug, Clone)]
pub struct SplitInfo {
    /// Folder the names are relative to.
    pub root: PathBuf,
    /// Per image: relative path or `<batch file>#<record>`.
    pub names: Vec<String>,
    /// Per image: label.
    pub labels: Vec<usize>,
}

/// Images and labels of one split as used by fine-tuning: NHWC RGB `u8` pixels.
pub struct PixelSplit<'a> {
    /// Pixels of all images, `labels.len() * size * size * 3` bytes.
    pub pixels: &'a [u8],
    /// Labels.
    pub labels: &'a [usize],
    /// Image side, pixels.
    pub size: usize,
}

impl<'a> From<&'a LoadedSplit> for PixelSplit<'a> {
    fn from(s: &'a LoadedSplit) -> Self {
        PixelSplit {
            pixels: &s.pixels,
            labels: &s.labels,
            size: s.size,
        }
    }
}

/// A run's decoded splits and the files that could not be decoded.
pub struct RunImages {
    /// The split list the images come from.
    pub list: SplitList,
    /// How the files were decoded.
    pub spec: ImageSpec,
    /// Training images (names relative to the list's root).
    pub train: LoadedSplit,
    /// Validation images, when the list has any (else the test split validates).
    pub val: Option<LoadedSplit>,
    /// Held-out test images.
    pub test: LoadedSplit,
    /// Files left out because they could not be decoded: first those the list left out before
    /// its splits ([`SplitList::unusable`]), then those of each split in list order (training,
    /// validation, test), each once.
    pub skipped: Vec<SkippedFile>,
}

impl RunImages {
    /// Decodes every split of `list` with `spec`; a file that cannot be decoded (or that the list
    /// left out as no image) is skipped (and reported to `events` with its reason) or, with
    /// [`OnError::Stop`] (`--strict`), stops the load.
    ///
    /// # Errors
    /// As [`SplitList::load`]; [`crate::Error::InvalidFile`] naming the first file the list left
    /// out, with `--strict`; naming the data when every training or test image was skipped.
    pub fn load(
        list: SplitList,
        spec: ImageSpec,
        on_error: OnError,
        events: &dyn EventSink,
    ) -> Result<RunImages> {
        if let (OnError::Stop, Some(first)) = (on_error, list.unusable.first()) {
            return Err(crate::Error::invalid(&first.path, first.message.clone()));
        }
        report_skipped(&list.unusable, events);
        let mut skipped = list.unusable.clone();
        let mut load = |part: SplitPart| -> Result<LoadedSplit> {
            let loaded = list.load(part, &spec, on_error)?;
            report_skipped(&loaded.skipped, events);
            skipped.extend(loaded.skipped);
            if loaded.split.is_empty() && !list.part(part).is_empty() {
                return Err(crate::Error::invalid(
                    &list.root,
                    format!(
                        "none of the {} {} images could be decoded (see the warnings above)",
                        list.part(part).len(),
                        part.as_str()
                    ),
                ));
            }
            Ok(loaded.split)
        };
        let train = load(SplitPart::Train)?;
        let val = if list.val.is_empty() {
            None
        } else {
            Some(load(SplitPart::Val)?)
        };
        let test = load(SplitPart::Test)?;
        Ok(RunImages {
            list,
            spec,
            train,
            val,
            test,
            skipped,
        })
    }

    /// The test images as `predictions.json` names them: relative to the held-out folder
    /// (`test/` or `val/`) when the dataset has one, else to the list's root.
    pub fn test_info(&self) -> SplitInfo {
        held_out_info(&self.list, &self.test)
    }
}

/// Names and labels of `split` (held-out images of `list`) relative to the held-out folder of the
/// list's layout (`test/`, `val/`), else to the list's root: `predictions.json`'s `data_root` and
/// `file`, which `export` reads back.
pub fn held_out_info(list: &SplitList, split: &LoadedSplit) -> SplitInfo {
    let dir = list_layout(list).held_out_dir();
    let prefix = dir.map(|d| format!("{d}/"));
    SplitInfo {
        root: dir.map_or_else(|| list.root.clone(), |d| list.root.join(d)),
        names: split
            .names
            .iter()
            .map(|n| match &prefix {
                Some(p) => n.strip_prefix(p.as_str()).unwrap_or(n).to_string(),
                None => n.clone(),
            })
            .collect(),
        labels: split.labels.clone(),
    }
}

/// The data part of `pipe train`'s first line: the layout and which split is held out, e.g.
/// `data: image folders train/ + val/ in data/hymenoptera (val/ is the held-out split)`.
pub fn layout_line(layout: &DataLayout) -> String {
    format!("data: {}", layout.describe())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{LayoutKind, SplitEntry};

    fn list(kind: LayoutKind, files: &[&str]) -> (SplitList, LoadedSplit) {
        let entries: Vec<SplitEntry> = files
            .iter()
            .map(|f| SplitEntry {
                file: f.to_string(),
                label: 0,
                raw: None,
            })
            .collect();
        let list = SplitList {
            format: crate::data::split::SPLIT_FORMAT,
            layout: kind,
            root: PathBuf::from("/d"),
            classes: vec!["a".into(), "b".into()],
            seed: 1,
            val_share: 0.0,
            test_share: 0.0,
            train: Vec::new(),
            val: Vec::new(),
            test: entries,
            unusable: Vec::new(),
        };
        let split = LoadedSplit {
            classes: list.classes.clone(),
            root: list.root.clone(),
            names: files.iter().map(|f| f.to_string()).collect(),
            labels: vec![0; files.len()],
            pixels: Vec::new(),
            size: 32,
        };
        (list, split)
    }

    /// `predictions.json` names test images relative to the held-out folder of split-folder
    /// layouts, and to the root otherwise (single folder, binary release).
    #[test]
    fn held_out_names_are_relative_to_the_held_out_folder() {
        let cases = [
            (LayoutKind::TrainTest, "test/a/1.jpg", "/d/test", "a/1.jpg"),
            (LayoutKind::TrainVal, "val/a/1.jpg", "/d/val", "a/1.jpg"),
            (
                LayoutKind::TrainValTest,
                "test/a/1.jpg",
                "/d/test",
                "a/1.jpg",
            ),
            (LayoutKind::ClassFolders, "a/1.jpg", "/d", "a/1.jpg"),
            (
                LayoutKind::CifarBinary,
                "test_batch.bin#3",
                "/d",
                "test_batch.bin#3",
            ),
        ];
        for (kind, file, root, name) in cases {
            let (list, split) = list(kind, &[file]);
            let info = held_out_info(&list, &split);
            assert_eq!(info.root, PathBuf::from(root), "{kind:?}");
            assert_eq!(info.names, vec![name.to_string()], "{kind:?}");
        }
    }
}
