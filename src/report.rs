//! Classification reports: the predicted class of a row of scores (argmax, top-k), accuracy,
//! per-class precision and recall, confusion matrix; text tables.

use serde::Serialize;

/// Index of the maximum (first on ties) of a row of scores (probabilities or logits).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// The `k` largest values of a row as `(index, value)`, largest first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}

/// Metrics of predictions against true labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassReport {
    /// Class names.
    pub classes: Vec<String>,
    /// Number of images.
    pub images: usize,
    /// Fraction of images whose predicted class is the true one, 0..1.
    pub accuracy: f64,
    /// Per class: of the images predicted as the class, the fraction that are (0 when none predicted).
    pub precision: Vec<f64>,
    /// Per class: of the images of the class, the fraction predicted as it (0 when none).
    pub recall: Vec<f64>,
    /// The mean of the recalls of the classes that have images, 0..1 (scikit-learn's
    /// `balanced_accuracy_score`): what accuracy would be with every class equally frequent.
    pub balanced_accuracy: f64,
    /// The mean F1 (harmonic mean of precision and recall; 0 where both are 0) over the classes that
    /// have images or predictions, 0..1 (scikit-learn's `f1_score(average="macro")`).
    pub macro_f1: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

impl ClassReport {
    /// Builds the report; `truth` and `predicted` hold class indices below `classes.len()`.
    pub fn new(classes: &[String], truth: &[usize], predicted: &[usize]) -> Self {
        let c = classes.len();
        let mut confusion = vec![vec![0usize; c]; c];
        for (&t, &p) in truth.iter().zip(predicted) {
            if t < c && p < c {
                confusion[t][p] += 1;
            }
        }
        Self::with_images(classes, confusion, truth.len())
    }

    /// Builds the report from a confusion matrix, `confusion[true][predicted]` counts (`classes.len()`
    /// square), as accumulated one image at a time.
    pub fn from_confusion(classes: &[String], confusion: Vec<Vec<usize>>) -> Self {
        let images = confusion.iter().flatten().sum();
        Self::with_images(classes, confusion, images)
    }

    /// The report of `confusion` over `images` images (accuracy = diagonal / `images`).
    fn with_images(classes: &[String], confusion: Vec<Vec<usize>>, images: usize) -> Self {
        let c = classes.len();
        let correct: usize = (0..c).map(|i| confusion[i][i]).sum();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision: Vec<f64> = (0..c)
            .map(|j| ratio(confusion[j][j], (0..c).map(|i| confusion[i][j]).sum()))
            .collect();
        let recall: Vec<f64> = (0..c)
            .map(|i| ratio(confusion[i][i], confusion[i].iter().sum()))
            .collect();
        let truth = |i: usize| confusion[i].iter().sum::<usize>();
        let predicted = |j: usize| (0..c).map(|i| confusion[i][j]).sum::<usize>();
        let mean = |v: Vec<f64>| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let balanced_accuracy = mean(
            (0..c)
                .filter(|&i| truth(i) > 0)
                .map(|i| recall[i])
                .collect(),
        );
        let macro_f1 = mean(
            (0..c)
                .filter(|&i| truth(i) + predicted(i) > 0)
                .map(|i| {
                    let (p, r): (f64, f64) = (precision[i], recall[i]);
                    if p + r == 0.0 {
                        0.0
                    } else {
                        2.0 * p * r / (p + r)
                    }
                })
                .collect(),
        );
        ClassReport {
            classes: classes.to_vec(),
            images,
            accuracy: ratio(correct, images),
            precision,
            recall,
            balanced_accuracy,
            macro_f1,
            confusion,
        }
    }

    /// A text table: per-class precision and recall, then the confusion matrix (rows = true class).
    pub fn table(&self) -> String {
        let w = self
            .classes
            .iter()
            .map(|c| c.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut s = format!("{:<w$}  precision  recall  images\n", "class");
        for (i, c) in self.classes.iter().enumerate() {
            s += &format!(
                "{c:<w$}  {:>9.4}  {:>6.4}  {:>6}\n",
                self.precision[i],
                self.recall[i],
                self.confusion[i].iter().sum::<usize>()
            );
        }
        s += &format!(
            "\nconfusion matrix (rows: true class, columns: predicted)\n{:<w$}",
            ""
        );
        let cw = self
            .classes
            .iter()
            .map(|c| c.len().min(6))
            .max()
            .unwrap_or(4)
            .max(5);
        for c in &self.classes {
            s += &format!(" {:>cw$}", &c[..c.len().min(cw)]);
        }
        s += "\n";
        for (i, c) in self.classes.iter().enumerate() {
            s += &format!("{c:<w$}");
            for v in &self.confusion[i] {
                s += &format!(" {v:>cw$}");
            }
            s += "\n";
        }
        s
    }

    /// The `n` largest off-diagonal cells of the confusion matrix as (true class, predicted class,
    /// count), largest first (ties: lower true, then lower predicted index first); zero cells omitted.
    pub fn most_confused(&self, n: usize) -> Vec<(usize, usize, usize)> {
        let mut cells: Vec<(usize, usize, usize)> = self
            .confusion
            .iter()
            .enumerate()
            .flat_map(|(i, row)| {
                row.iter()
                    .enumerate()
                    .filter(move |&(j, &v)| j != i && v > 0)
                    .map(move |(j, &v)| (i, j, v))
            })
            .collect();
        cells.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        cells.truncate(n);
        cells
    }

    /// `balanced accuracy 0.7500  macro-F1 0.6667`: the two figures of an accuracy report that do not
    /// favour the frequent classes.
    pub fn balanced_line(&self) -> String {
        format!(
            "balanced accuracy {:.4}  macro-F1 {:.4}",
            self.balanced_accuracy, self.macro_f1
        )
    }

    /// A short summary for labelled inference: [`ClassReport::balanced_line`], the recall of each
    /// class that has images on one line, then the most frequent confusions (`true -> predicted:
    /// count`).
    pub fn summary(&self, confusions: usize) -> String {
        let recalls: Vec<String> = self
            .classes
            .iter()
            .zip(&self.recall)
            .zip(&self.confusion)
            .filter(|(_, row)| row.iter().sum::<usize>() > 0)
            .map(|((c, r), _)| format!("{c} {r:.2}"))
            .collect();
        let mut s = format!(
            "{}\nrecall per class: {}",
            self.balanced_line(),
            recalls.join(", ")
        );
        let top = self.most_confused(confusions);
        if !top.is_empty() {
            let pairs: Vec<String> = top
                .iter()
                .map(|&(t, p, v)| format!("{} -> {}: {v}", self.classes[t], self.classes[p]))
                .collect();
            s += &format!("\nmost confused: {}", pairs.join(", "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[3.0]), 0);
    }

    #[test]
    fn top_k_orders_by_value() {
        assert_eq!(
            top_k(&[0.1, 0.5, 0.2, 0.5], 3),
            vec![(1, 0.5), (3, 0.5), (2, 0.2)]
        );
        assert_eq!(top_k(&[0.3], 5), vec![(0, 0.3)]);
    }

    #[test]
    fn precision_recall_and_confusion_by_hand() {
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // truth a a a b b c ; predicted a b a b a c
        let r = ClassReport::new(&classes, &[0, 0, 0, 1, 1, 2], &[0, 1, 0, 1, 0, 2]);
        assert_eq!(
            r.confusion,
            vec![vec![2, 1, 0], vec![1, 1, 0], vec![0, 0, 1]]
        );
        assert!((r.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((r.precision[0] - 2.0 / 3.0).abs() < 1e-12); // predicted a: 3, right 2
        assert!((r.recall[1] - 0.5).abs() < 1e-12);
        assert_eq!(r.precision[2], 1.0);
        let t = r.table();
        assert!(
            t.contains("confusion matrix") && t.lines().count() == 10,
            "{t}"
        );
        // Off-diagonal cells: (a, b) = 1 and (b, a) = 1; ties ordered by true class.
        assert_eq!(r.most_confused(5), vec![(0, 1, 1), (1, 0, 1)]);
        assert_eq!(r.most_confused(1), vec![(0, 1, 1)]);
        // Balanced accuracy: (2/3 + 1/2 + 1) / 3; F1: a 2/3 (P 2/3, R 2/3), b 1/2 (P 1/2, R 1/2), c 1.
        assert!((r.balanced_accuracy - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
        assert!((r.macro_f1 - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
        let sum = r.summary(3);
        assert!(
            sum.starts_with(
                "balanced accuracy 0.7222  macro-F1 0.7222\nrecall per class: a 0.67, b 0.50, c 1.00"
            ),
            "{sum}"
        );
        assert!(sum.contains("most confused: a -> b: 1, b -> a: 1"), "{sum}");
        assert_eq!(
            ClassReport::from_confusion(&classes, r.confusion.clone()),
            r
        );
    }

    /// Imbalanced classes, by hand: 8 images of a (all predicted a), 2 of b (one predicted a); and a
    /// class c with neither images nor predictions, which neither mean counts.
    #[test]
    fn balanced_accuracy_and_macro_f1_by_hand() {
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let truth = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        let predicted = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let r = ClassReport::new(&classes, &truth, &predicted);
        assert!((r.accuracy - 0.9).abs() < 1e-12);
        // Recall a 1, b 1/2: balanced (1 + 0.5) / 2 = 0.75.
        assert!((r.balanced_accuracy - 0.75).abs() < 1e-12);
        // a: P 8/9, R 1, F1 16/17; b: P 1, R 1/2, F1 2/3; macro (16/17 + 2/3) / 2.
        let want = (16.0 / 17.0 + 2.0 / 3.0) / 2.0;
        assert!((r.macro_f1 - want).abs() < 1e-12, "{}", r.macro_f1);
        assert_eq!(
            r.balanced_line(),
            "balanced accuracy 0.7500  macro-F1 0.8039"
        );
    }
}
