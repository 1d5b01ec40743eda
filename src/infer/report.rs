//! [`InferReport`]: what `pipe infer` computes over the files it reads (images classified, accuracy
//! and confusion of the images in class folders, files skipped per reason), accumulated one
//! [`Record`] at a time.

use super::classify::{Prediction, Record};
use crate::data::SkipCounts;
use crate::report::ClassReport;
use std::path::Path;

/// The class an image's path claims: the name of its parent folder, when that is one of `classes`.
pub fn folder_label(path: &Path, classes: &[String]) -> Option<usize> {
    let parent = path.parent()?.file_name()?.to_str()?;
    classes.iter().position(|c| c == parent)
}

/// The folders holding `files` when they look like class folders made for another model: the files
/// sit in at least two folders and none of these folders is named after one of `classes`. Their
/// names, sorted; `None` otherwise (one folder of photos to classify, or class folders that match).
/// `pipe infer` warns then: no accuracy can be computed, and `--model` may not be the model meant.
pub fn foreign_class_folders(
    files: &[std::path::PathBuf],
    classes: &[String],
) -> Option<Vec<String>> {
    let folders: std::collections::BTreeSet<String> = files
        .iter()
        .filter_map(|f| Some(f.parent()?.file_name()?.to_string_lossy().into_owned()))
        .collect();
    let foreign = folders.len() >= 2 && folders.iter().all(|f| !classes.contains(f));
    foreign.then(|| folders.into_iter().collect())
}

/// The summary of classified images: how many, and for those in folders named after a class
/// ("labelled", truth = [`folder_label`]) how many were right and the confusion matrix; and how many
/// files could not be decoded, per reason. Its size does not depend on the number of files.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InferReport {
    /// Class names, index = output column.
    pub classes: Vec<String>,
    /// Images classified.
    pub images: usize,
    /// Images in a folder named after one of the classes.
    pub labelled: usize,
    /// Labelled images whose predicted class is their folder's.
    pub correct: usize,
    /// `confusion[true][predicted]` counts over the labelled images.
    pub confusion: Vec<Vec<usize>>,
    /// Files that could not be decoded, per reason.
    pub skipped: SkipCounts,
}

impl InferReport {
    /// An empty report over `classes`.
    pub fn new(classes: &[String]) -> Self {
        InferReport {
            classes: classes.to_vec(),
            images: 0,
            labelled: 0,
            correct: 0,
            confusion: vec![vec![0; classes.len()]; classes.len()],
            skipped: SkipCounts::default(),
        }
    }

    /// Counts one record: a classified image ([`InferReport::add`]) or a skipped file.
    pub fn add_record(&mut self, r: &Record) {
        match r {
            Record::Classified(p) => self.add(p),
            Record::Skipped(s) => self.skipped.add(s.reason),
        }
    }

    /// Counts one classified image.
    pub fn add(&mut self, p: &Prediction) {
        self.images += 1;
        if let Some(truth) = folder_label(&p.path, &self.classes) {
            self.labelled += 1;
            self.correct += usize::from(truth == p.class_index);
            if let Some(cell) = self.confusion[truth].get_mut(p.class_index) {
                *cell += 1;
            }
        }
    }

    /// Fraction of the labelled images classified right, 0..1; `None` without labelled images.
    pub fn accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }

    /// Precision, recall and confusion per class over the labelled images.
    pub fn class_report(&self) -> ClassReport {
        ClassReport::from_confusion(&self.classes, self.confusion.clone())
    }

    /// The closing summary, `None` without labelled images: the accuracy line, balanced accuracy and
    /// macro-F1, the recall of each class and the three most frequent confusions, one per line (no
    /// final newline):
    /// ```text
    /// accuracy 0.3940 (788/2000 images in class folders)
    /// balanced accuracy 0.3950  macro-F1 0.3921
    /// recall per class: cat 0.34, dog 0.45
    /// most confused: dog -> cat: 193, cat -> dog: 169, cat -> frog: 102
    /// ```
    pub fn summary(&self) -> Option<String> {
        let acc = self.accuracy()?;
        Some(format!(
            "accuracy {acc:.4} ({}/{} images in class folders)\n{}",
            self.correct,
            self.labelled,
            self.class_report().summary(3)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_class_folders_are_two_or_more_folders_none_a_class() {
        let classes: Vec<String> = ["cat", "dog"].map(String::from).to_vec();
        let files = |paths: &[&str]| -> Vec<std::path::PathBuf> {
            paths.iter().map(std::path::PathBuf::from).collect()
        };
        assert_eq!(
            foreign_class_folders(
                &files(&["v/ants/a.jpg", "v/bees/b.jpg", "v/ants/c.jpg"]),
                &classes
            ),
            Some(vec!["ants".to_string(), "bees".to_string()])
        );
        // One folder of new photos, or folders of which one is a class: no warning.
        assert_eq!(
            foreign_class_folders(&files(&["new/a.jpg", "new/b.jpg"]), &classes),
            None
        );
        assert_eq!(
            foreign_class_folders(&files(&["v/cat/a.jpg", "v/misc/b.jpg"]), &classes),
            None
        );
        assert_eq!(
            foreign_class_folders(&files(&["a.jpg", "b/c.jpg"]), &classes),
            None
        );
    }

    #[test]
    fn folder_label_uses_parent_folder() {
        let classes = vec!["cat".to_string(), "dog".to_string()];
        assert_eq!(
            folder_label(Path::new("data/test/dog/0001.jpg"), &classes),
            Some(1)
        );
        assert_eq!(
            folder_label(Path::new("data/test/0001.jpg"), &classes),
            None
        );
    }

    #[test]
    fn report_counts_labelled_images_and_their_confusion() {
        let classes = vec!["cat".to_string(), "dog".to_string()];
        let p = |path: &str, k: usize| Prediction {
            path: path.into(),
            class_index: k,
            label: classes[k].clone(),
            probability: 1.0,
            probabilities: vec![0.0; 2],
        };
        let mut r = InferReport::new(&classes);
        assert_eq!((r.accuracy(), r.summary()), (None, None));
        for (path, k) in [
            ("t/cat/a.png", 0),
            ("t/cat/b.png", 1),
            ("t/dog/c.png", 1),
            ("x.png", 0),
        ] {
            r.add(&p(path, k));
        }
        assert_eq!((r.images, r.labelled, r.correct), (4, 3, 2));
        assert_eq!(r.confusion, vec![vec![1, 1], vec![0, 1]]);
        assert_eq!(
            r.summary().unwrap(),
            "accuracy 0.6667 (2/3 images in class folders)\n\
             balanced accuracy 0.7500  macro-F1 0.6667\n\
             recall per class: cat 0.50, dog 1.00\nmost confused: cat -> dog: 1"
        );
    }
}
