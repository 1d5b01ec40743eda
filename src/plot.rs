//! PNG figures of a run, drawn with plotters into an RGB buffer and written atomically with the image
//! crate: training curves (`accuracy.png`, `loss.png`), a grid of test predictions
//! (`predictions.png`), a confusion matrix (`confusion.png`) and sweep curves (`sweep.png`).
//!
//! Text uses DejaVu Sans, embedded in the binary (the `dejavu` crate), so no system font is needed.

use crate::error::{Error, Result};
use crate::report::ClassReport;
use crate::run::EpochMetrics;
use crate::util::write_atomic;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

/// Font family name under which DejaVu Sans is registered with plotters.
const FONT: &str = "sans-serif";

/// Colour of the training curve (matplotlib's default blue, as in the Keras seed's figure).
const TRAIN_COLOUR: RGBColor = RGBColor(31, 119, 180);
/// Colour of the validation curve (matplotlib's default orange).
const VAL_COLOUR: RGBColor = RGBColor(255, 127, 14);
/// Colour of the recipe's learning rate on `lr_find.png` (matplotlib's default grey, `tab:gray`).
const RECIPE_COLOUR: RGBColor = RGBColor(127, 127, 127);
/// Colour marking a wrong prediction.
pub const WRONG_COLOUR: RGBColor = RGBColor(214, 39, 40);
/// Colour marking a right prediction.
pub const RIGHT_COLOUR: RGBColor = RGBColor(44, 160, 44);

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded fonts are valid TrueType files; a failure would only mean missing text.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, std::io::Error::other(format!("drawing failed: {e}")))
}

/// Draws with `draw` on a white `width`x`height` canvas, then lets `post` edit the RGB pixels (for
/// images pasted in), and writes the PNG atomically to `path`.
fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
    post: impl FnOnce(&mut [u8]),
) -> Result<()> {
    register_fonts();
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
        draw(&root)?;
        root.present().map_err(|e| draw_err(path, e))?;
    }
    post(&mut buf);
    let img = image::RgbImage::from_raw(width, height, buf)
        .ok_or_else(|| draw_err(path, "buffer size mismatch"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| draw_err(path, e))?;
    write_atomic(path, |w| w.write_all(&png))
}

/// Points `(epoch, value)` of a curve.
type Points = Vec<(f64, f64)>;

/// Which per-epoch metric a curve figure shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// Accuracy (0..1) of training and validation.
    Accuracy,
    /// Mean categorical cross-entropy of training and validation.
    Loss,
}

/// Training and validation curves per epoch (the Keras seed's figure): `accuracy.png` or `loss.png`,
/// 800x500 pixels, blue = training, orange = validation, one marker per epoch. A fine-tuning run's
/// history (lines with a phase) is drawn epoch after epoch, the head warm-up epochs on a grey band.
///
/// # Errors
/// [`Error::Io`] naming `path` when drawing or writing fails; [`Error::Usage`] for an empty history.
pub fn training_curves(
    history: &[EpochMetrics],
    curve: Curve,
    val_name: &str,
    path: &Path,
) -> Result<()> {
    let Some(first) = history.first() else {
        return Err(Error::Usage("no epoch to plot".into()));
    };
    let phased = history.iter().any(|m| m.phase.is_some());
    let first = if phased { 1.0 } else { first.epoch as f64 };
    let (train, val): (Points, Points) = history
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let e = first + i as f64;
            match curve {
                Curve::Accuracy => ((e, m.accuracy), (e, m.val_accuracy)),
                Curve::Loss => ((e, m.loss), (e, m.val_loss)),
            }
        })
        .unzip();
    let (title, ylabel) = match curve {
        Curve::Accuracy => (format!("Training and {val_name} accuracy"), "accuracy"),
        Curve::Loss => (format!("Training and {val_name} loss"), "loss"),
    };
    let last = first + history.len() as f64 - 1.0;
    let finite =
        |points: Points| -> Points { points.into_iter().filter(|p| p.1.is_finite()).collect() };
    let figure = CurveFigure {
        title,
        title_size: 26,
        ylabel,
        x: if last > first {
            (first, last)
        } else {
            (first - 0.5, first + 0.5)
        },
        y: value_range(curve, train.iter().chain(&val).map(|p| p.1)),
        x_labels: history.len().clamp(2, 16),
        legend: match curve {
            Curve::Accuracy => SeriesLabelPosition::LowerRight,
            Curve::Loss => SeriesLabelPosition::UpperRight,
        },
        legend_size: 18,
        line: (3, 5),
        series: vec![
            ("training", finite(train), TRAIN_COLOUR.to_rgba()),
            (val_name, finite(val), VAL_COLOUR.to_rgba()),
        ],
        band: warm_up_band(history),
        y_scientific: false,
        xlabel: "epoch",
        x_log10: false,
    };
    render(path, (800, 500), |root| figure.draw(root, path), |_| {})
}

/// The x range (in history positions from 1) of a fine-tuning run's warm-up epochs, if any.
fn warm_up_band(history: &[EpochMetrics]) -> Option<(f64, f64)> {
    let warm = history
        .iter()
        .take_while(|m| m.phase == Some(crate::run::Phase::WarmUp))
        .count();
    (warm > 0).then_some((0.5, warm as f64 + 0.5))
}

/// The part of a range test's curve (log10 of the rate, smoothed loss) that `lr_find.png` shows, and
/// its y range. A range test stops at the first step whose smoothed loss diverges, so only the last
/// point can shoot up: when it lies above both [`LR_FIND_Y_CAP`] times the highest loss before the
/// lowest and every other point, it is drawn at the chart's top edge (the flag says so) instead of
/// setting the range; every other point is shown as it is. A diverged last step can be 1e5 times the
/// rest (seen in a fine-tuning sweep), which would otherwise flatten the whole curve into the axis.
fn lr_find_view(curve: &[(f64, f64)]) -> (Points, (f64, f64), bool) {
    let mut shown: Points = curve.to_vec();
    let top = |points: &[(f64, f64)]| points.iter().fold(f64::MIN, |a, p| a.max(p.1));
    let lowest = curve
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
        .map_or(0, |(i, _)| i);
    let last = curve.len().saturating_sub(1);
    let cap = (LR_FIND_Y_CAP * top(&curve[..=lowest.min(last)])).max(top(&curve[..last]));
    let cut = lowest < last && curve[last].1 > cap;
    if cut {
        shown[last].1 = cap;
    }
    let (lo, hi) = shown
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let (y0, y1) = ((lo - pad).max(0.0), hi + pad);
    if cut {
        shown[last].1 = y1;
    }
    (shown, (y0, y1), cut)
}

/// How far above the highest loss before the lowest `lr_find.png` follows a diverged last step at
/// least ([`lr_find_view`]): 1.25x, enough to show where the loss turns up.
const LR_FIND_Y_CAP: f64 = 1.25;

/// `lr_find.png`: the learning-rate range test, the smoothed training loss against the learning rate
/// (log10 axis, labelled `1e<k>`) over the loss of each step (pale), with the suggested rate and
/// the `recipe`'s rate (when it lies on the axis) as vertical lines, their values in the legend. A loss that shoots up at the end leaves the chart at its top edge
/// ([`lr_find_view`]): the x axis ends there and the legend says the curve was cut. `smoothed` and
/// `losses` are (learning rate, loss) pairs with positive rates, one per step; the loss axis reaches
/// down to the lowest per-step loss, and per-step losses above the chart are drawn at its top edge.
///
/// # Errors
/// [`Error::Usage`] with fewer than two points; [`Error::Io`] naming `path` when the figure cannot be
/// drawn or written.
pub fn lr_find(
    smoothed: &[(f64, f64)],
    losses: &[(f64, f64)],
    suggestion: Option<f64>,
    recipe: Option<f64>,
    path: &Path,
) -> Result<()> {
    let log = |points: &[(f64, f64)]| -> Points {
        points
            .iter()
            .filter(|(lr, l)| *lr > 0.0 && l.is_finite())
            .map(|&(lr, l)| (lr.log10(), l))
            .collect()
    };
    let curve = log(smoothed);
    if curve.len() < 2 {
        return Err(Error::Usage("fewer than two losses to plot".into()));
    }
    let (curve, (y0, y1), cut) = lr_find_view(&curve);
    let (x0, x1) = (curve[0].0, curve[curve.len() - 1].0);
    let steps: Points = log(losses).into_iter().filter(|p| p.0 <= x1).collect();
    // The chart reaches down to the lowest step's loss too (noise below the smoothed curve).
    let lowest = steps.iter().fold(f64::MAX, |a, p| a.min(p.1));
    let y0 = if lowest < y0 {
        (lowest - 0.05 * (y1 - lowest)).max(0.0)
    } else {
        y0
    };
    let steps: Points = steps
        .into_iter()
        .map(|(x, l)| (x, l.clamp(y0, y1)))
        .collect();
    // The legend names the suggested rate and the recipe's as the printed lines do; the recipe's
    // is drawn when it lies on the rate axis.
    let suggested = suggestion
        .filter(|&lr| lr > 0.0)
        .map(|lr| (lr, format!("suggested rate {}", crate::util::rate(lr))));
    let recipe = recipe
        .filter(|&lr| lr > 0.0 && (x0..=x1).contains(&lr.log10()))
        .map(|lr| (lr, format!("the recipe's --lr {}", crate::util::rate(lr))));
    let mut series = vec![
        ("loss of each step", steps, TRAIN_COLOUR.mix(0.3)),
        (
            if cut {
                "smoothed loss (cut where it diverges)"
            } else {
                "smoothed loss"
            },
            curve,
            TRAIN_COLOUR.to_rgba(),
        ),
    ];
    if let Some((lr, label)) = &recipe {
        let x = lr.log10();
        series.push((
            label.as_str(),
            vec![(x, y0), (x, y1)],
            RECIPE_COLOUR.to_rgba(),
        ));
    }
    if let Some((lr, label)) = &suggested {
        let x = lr.log10();
        series.push((label.as_str(), vec![(x, y0), (x, y1)], VAL_COLOUR.to_rgba()));
    }
    let figure = CurveFigure {
        title: "Learning-rate range test".into(),
        title_size: 26,
        ylabel: "loss",
        x: (x0, x1),
        y: (y0, y1),
        x_labels: ((x1 - x0).ceil() as usize + 1).clamp(2, 16),
        legend: SeriesLabelPosition::UpperLeft,
        legend_size: 18,
        line: (3, 0),
        series,
        band: None,
        y_scientific: false,
        xlabel: "learning rate (log scale)",
        x_log10: true,
    };
    render(path, (800, 500), |root| figure.draw(root, path), |_| {})
}

/// The learning rate of a fine-tuning run over its epochs (`lr.png`, 800x500 pixels): `warm_up` and
/// `fine_tune` points (epoch, rate), x counted from the start of the warm-up.
///
/// # Errors
/// [`Error::Io`] naming `path` when drawing or writing fails; [`Error::Usage`] without points.
pub fn learning_rate(warm_up: Points, fine_tune: Points, path: &Path) -> Result<()> {
    let all = || warm_up.iter().chain(&fine_tune);
    let (x0, x1) = all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let hi = all().fold(0f64, |a, p| a.max(p.1));
    if x0 >= x1 {
        return Err(Error::Usage("no learning rates to plot".into()));
    }
    let figure = CurveFigure {
        title: "Learning rate".into(),
        title_size: 26,
        ylabel: "learning rate",
        x: (x0, x1),
        y: (0.0, hi * 1.1),
        x_labels: ((x1 - x0).ceil() as usize + 1).clamp(2, 16),
        legend: SeriesLabelPosition::UpperRight,
        legend_size: 18,
        line: (3, 0),
        series: vec![
            ("head warm-up", warm_up, VAL_COLOUR.to_rgba()),
            ("fine-tuning", fine_tune, TRAIN_COLOUR.to_rgba()),
        ],
        band: None,
        y_scientific: true,
        xlabel: "epoch",
        x_log10: false,
    };
    render(path, (800, 500), |root| figure.draw(root, path), |_| {})
}

/// The y range of a curve figure: 0..1 for accuracy; the finite values padded by 10% (not below 0)
/// for the loss.
fn value_range(curve: Curve, values: impl Iterator<Item = f64>) -> (f64, f64) {
    let finite = values.filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    match curve {
        Curve::Accuracy => (0.0, 1.0),
        Curve::Loss if lo <= hi => {
            let pad = ((hi - lo) * 0.1).max(1e-3);
            ((lo - pad).max(0.0), hi + pad)
        }
        Curve::Loss => (0.0, 1.0),
    }
}

/// What [`training_curves`] and [`sweep_curves`] draw: value per epoch, one line with markers per
/// series, and a legend.
struct CurveFigure<'a> {
    title: String,
    /// Caption font size, pixels.
    title_size: u32,
    ylabel: &'a str,
    x: (f64, f64),
    y: (f64, f64),
    /// Number of epoch labels on the x axis.
    x_labels: usize,
    legend: SeriesLabelPosition,
    /// Legend font size, pixels.
    legend_size: u32,
    /// Line width and marker radius, pixels.
    line: (u32, u32),
    /// Legend text, points, colour.
    series: Vec<(&'a str, Points, RGBAColor)>,
    /// An x range drawn as a grey band: the head warm-up of a fine-tuning run.
    band: Option<(f64, f64)>,
    /// y labels in scientific notation (learning rates) instead of two decimals.
    y_scientific: bool,
    /// The x axis' description.
    xlabel: &'a str,
    /// x values are log10 of the quantity, labelled `1e<x>`.
    x_log10: bool,
}

impl CurveFigure<'_> {
    fn draw(&self, root: &DrawingArea<BitMapBackend<'_>, Shift>, path: &Path) -> Result<()> {
        let e = |e| draw_err(path, e);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, self.title_size))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(if self.y_scientific { 84 } else { 64 })
            .build_cartesian_2d(self.x.0..self.x.1, self.y.0..self.y.1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(self.xlabel)
            .y_desc(self.ylabel)
            .x_labels(self.x_labels)
            .x_label_formatter(&|v| {
                if self.x_log10 {
                    format!("1e{v:.0}")
                } else {
                    format!("{v:.0}")
                }
            })
            .y_label_formatter(&|v| {
                if self.y_scientific {
                    format!("{v:.1e}")
                } else {
                    format!("{v:.2}")
                }
            })
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        if let Some((a, b)) = self.band {
            let grey = RGBColor(225, 225, 225);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(a, self.y.0), (b, self.y.1)],
                    grey.filled(),
                )))
                .map_err(e)?
                .label("head warm-up")
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 24, y + 6)], grey.filled()));
        }
        let (width, radius) = self.line;
        for (name, points, colour) in &self.series {
            let colour = *colour;
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(width)))
                .map_err(e)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
                });
            if radius > 0 {
                chart
                    .draw_series(
                        points
                            .iter()
                            .map(|&p| Circle::new(p, radius, colour.filled())),
                    )
                    .map_err(e)?;
            }
        }
        chart
            .configure_series_labels()
            .label_font((FONT, self.legend_size))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .position(self.legend.clone())
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// One image of [`prediction_grid`].
#[derive(Debug, Clone)]
pub struct PredictionTile {
    /// HWC RGB `u8` pixels, `size * size * 3` bytes.
    pub pixels: Vec<u8>,
    /// Side of the image, pixels.
    pub size: usize,
    /// True class index.
    pub label: usize,
    /// Predicted class index.
    pub predicted: usize,
    /// Probability of the predicted class, 0..1.
    pub probability: f32,
}

/// Side, pixels, of an image in the prediction grid (CIFAR-10's 32 pixels scaled 4x, nearest
/// neighbour so that pixels stay visible).
pub const TILE: u32 = 128;
const CELL_W: u32 = 190;
const CELL_H: u32 = 200;
const GRID_TOP: u32 = 50;
const TILE_TOP: u32 = 56;

/// The pixel rectangle `(x, y, side)` of tile `i` of a grid with `cols` columns.
pub fn tile_origin(i: usize, cols: usize) -> (u32, u32, u32) {
    let (r, c) = ((i / cols) as u32, (i % cols) as u32);
    (
        c * CELL_W + (CELL_W - TILE) / 2,
        GRID_TOP + r * CELL_H + TILE_TOP,
        TILE,
    )
}

/// A grid of test images (2 rows x 5 for 10 tiles), each titled with its predicted label and
/// probability; a wrong prediction is titled in red with the true label and framed in red, a right one
/// framed in green. Written to `path` (`predictions.png`).
///
/// # Errors
/// [`Error::Io`] naming `path` when drawing or writing fails; [`Error::Usage`] for no tiles.
pub fn prediction_grid(tiles: &[PredictionTile], classes: &[String], path: &Path) -> Result<()> {
    if tiles.is_empty() {
        return Err(Error::Usage("no test image to draw".into()));
    }
    let wrong = tiles.iter().filter(|t| t.label != t.predicted).count();
    let title = format!(
        "Predictions on {} test images ({} wrong, in red)",
        tiles.len(),
        wrong
    );
    labelled_grid(tiles, classes, &title, "true", path)
}

/// The training images a review suspects most (the lowest out-of-fold probability of their given
/// label first), as [`prediction_grid`] draws them: each titled with the suggested class and its
/// probability, in red with the given label when the two differ. Written to `path` (`review.png`).
///
/// # Errors
/// [`Error::Io`] naming `path` when drawing or writing fails; [`Error::Usage`] for no tiles.
pub fn review_grid(tiles: &[PredictionTile], classes: &[String], path: &Path) -> Result<()> {
    if tiles.is_empty() {
        return Err(Error::Usage("no training image to draw".into()));
    }
    let title = format!(
        "The {} training images whose given label the other folds find least likely",
        tiles.len()
    );
    labelled_grid(tiles, classes, &title, "given", path)
}

/// The test images with the highest loss (highest first), as [`prediction_grid`] draws them: each
/// titled with its predicted class and probability, and its true label where the two differ.
/// Written to `path` (`top_losses.png`).
///
/// # Errors
/// [`Error::Io`] naming `path` when drawing or writing fails; [`Error::Usage`] for no tiles.
pub fn top_losses_grid(tiles: &[PredictionTile], classes: &[String], path: &Path) -> Result<()> {
    if tiles.is_empty() {
        return Err(Error::Usage("no test image to draw".into()));
    }
    let title = format!("The {} test images with the highest loss", tiles.len());
    labelled_grid(tiles, classes, &title, "true", path)
}

/// A grid of images (5 per row), each titled with its predicted class and probability; one whose
/// predicted class is not its label is titled in red with `truth: <label>` and framed in red, the
/// others framed in green.
fn labelled_grid(
    tiles: &[PredictionTile],
    classes: &[String],
    title: &str,
    truth: &str,
    path: &Path,
) -> Result<()> {
    let cols = tiles.len().min(5);
    let rows = tiles.len().div_ceil(cols);
    let size = (cols as u32 * CELL_W, GRID_TOP + rows as u32 * CELL_H);
    let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| i.to_string());
    render(
        path,
        size,
        |root| {
            let e = |e| draw_err(path, e);
            root.draw_text(title, &(FONT, 22).into_font().color(&BLACK), (16, 14))
                .map_err(e)?;
            for (i, t) in tiles.iter().enumerate() {
                let (x, y, side) = tile_origin(i, cols);
                let (x, y, side) = (x as i32, y as i32, side as i32);
                let ok = t.label == t.predicted;
                let colour = if ok { RIGHT_COLOUR } else { WRONG_COLOUR };
                let cell_x = x - ((CELL_W - TILE) / 2) as i32;
                let lines = if ok {
                    vec![format!(
                        "{} ({:.0}%)",
                        name(t.predicted),
                        t.probability * 100.0
                    )]
                } else {
                    vec![
                        format!("{} ({:.0}%)", name(t.predicted), t.probability * 100.0),
                        format!("{truth}: {}", name(t.label)),
                    ]
                };
                for (k, line) in lines.iter().enumerate() {
                    let style = TextStyle::from((FONT, 17).into_font()).color(&colour);
                    let (w, _) = root.estimate_text_size(line, &style).map_err(e)?;
                    let tx = cell_x + (CELL_W as i32 - w as i32) / 2;
                    let ty = y - 44 + 20 * k as i32 - if ok { -20 } else { 0 };
                    root.draw_text(line, &style, (tx, ty)).map_err(e)?;
                }
                root.draw(&Rectangle::new(
                    [(x - 4, y - 4), (x + side + 3, y + side + 3)],
                    colour.stroke_width(4),
                ))
                .map_err(e)?;
            }
            Ok(())
        },
        |buf| {
            for (i, t) in tiles.iter().enumerate() {
                let (x0, y0, side) = tile_origin(i, cols);
                for y in 0..side {
                    for x in 0..side {
                        let sx = (x as usize * t.size) / side as usize;
                        let sy = (y as usize * t.size) / side as usize;
                        let src = (sy * t.size + sx) * 3;
                        let dst = (((y0 + y) * size.0 + x0 + x) * 3) as usize;
                        if let (Some(s), Some(d)) =
                            (t.pixels.get(src..src + 3), buf.get_mut(dst..dst + 3))
                        {
                            d.copy_from_slice(s);
                        }
                    }
                }
            }
        },
    )
}

/// The confusion matrix of `report` as a heat map (rows = true class, columns = predicted class,
/// darker = more images, each cell printed with its count), titled with the accuracy. Written to
/// `path` (`confusion.png`).
///
/// # Errors
/// [`Error::Io`] naming `path` when drawing or writing fails.
pub fn confusion_matrix(report: &ClassReport, path: &Path) -> Result<()> {
    let c = report.classes.len().max(1);
    let grid = Grid {
        cell: if c <= 12 { 56 } else { (700 / c as u32).max(8) },
        left: 150,
        top: 70,
    };
    let bottom = 130u32;
    let title = format!(
        "Confusion matrix: {} images, accuracy {:.4}",
        report.images, report.accuracy
    );
    // Wide enough for the title (a two-class matrix is narrower than it).
    register_fonts();
    let title_width = (FONT, 20)
        .into_font()
        .box_size(&title)
        .map_or(0, |(w, _)| w);
    let size = (
        (grid.left + grid.cell * c as u32 + 30).max(title_width + 24),
        grid.top + grid.cell * c as u32 + bottom,
    );
    let max = report
        .confusion
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    render(
        path,
        size,
        |root| {
            let e = |e| draw_err(path, e);
            root.draw_text(&title, &(FONT, 20).into_font().color(&BLACK), (12, 12))
                .map_err(e)?;
            root.draw_text(
                "rows: true class, columns: predicted class",
                &(FONT, 15).into_font().color(&BLACK.mix(0.7)),
                (12, 40),
            )
            .map_err(e)?;
            for (i, row) in report.confusion.iter().enumerate() {
                for (j, &n) in row.iter().enumerate() {
                    grid.draw_cell(root, (i, j), n, n as f64 / max as f64)
                        .map_err(e)?;
                }
            }
            grid.draw_class_names(root, &report.classes).map_err(e)
        },
        |_| {},
    )
}

/// Layout of the confusion matrix: square cells of `cell` pixels, the top-left corner at (`left`,
/// `top`).
struct Grid {
    cell: u32,
    left: u32,
    top: u32,
}

/// A drawing error of plotters' bitmap backend.
type BitmapError = DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

impl Grid {
    /// Cell (`row`, `column`) holding `n` images, shaded by `shade` (0..1) from white to dark blue,
    /// with the count printed when the cell is large enough.
    fn draw_cell(
        &self,
        root: &DrawingArea<BitMapBackend<'_>, Shift>,
        (row, column): (usize, usize),
        n: usize,
        shade: f64,
    ) -> std::result::Result<(), BitmapError> {
        let cell = self.cell as i32;
        let x = (self.left + column as u32 * self.cell) as i32;
        let y = (self.top + row as u32 * self.cell) as i32;
        // White (0) to a dark blue (the most frequent cell).
        let colour = RGBColor(
            (255.0 - shade * 247.0) as u8,
            (255.0 - shade * 207.0) as u8,
            (255.0 - shade * 148.0) as u8,
        );
        let corners = [(x, y), (x + cell, y + cell)];
        root.draw(&Rectangle::new(corners, colour.filled()))?;
        root.draw(&Rectangle::new(corners, BLACK.mix(0.15)))?;
        if cell >= 28 {
            let text_colour = if shade > 0.5 { WHITE } else { BLACK };
            let style = TextStyle::from((FONT, 15).into_font()).color(&text_colour);
            let s = n.to_string();
            let (w, h) = root.estimate_text_size(&s, &style)?;
            let at = (x + (cell - w as i32) / 2, y + (cell - h as i32) / 2);
            root.draw_text(&s, &style, at)?;
        }
        Ok(())
    }

    /// The class names: right-aligned left of each row, rotated below each column.
    fn draw_class_names(
        &self,
        root: &DrawingArea<BitMapBackend<'_>, Shift>,
        classes: &[String],
    ) -> std::result::Result<(), BitmapError> {
        let cell = self.cell as i32;
        let below = (self.top + classes.len().max(1) as u32 * self.cell) as i32 + 8;
        let font = (FONT, 15).into_font();
        for (i, name) in classes.iter().enumerate() {
            let style = TextStyle::from(font.clone()).color(&BLACK);
            let (w, h) = root.estimate_text_size(name, &style)?;
            let y = (self.top + i as u32 * self.cell) as i32 + (cell - h as i32) / 2;
            root.draw_text(name, &style, (self.left as i32 - 8 - w as i32, y))?;
            let x = (self.left + i as u32 * self.cell) as i32 + (cell - h as i32) / 2;
            let rotated =
                TextStyle::from(font.clone().transform(FontTransform::Rotate90)).color(&BLACK);
            root.draw_text(name, &rotated, (x + h as i32, below))?;
        }
        Ok(())
    }
}

/// One line of [`sweep_curves`].
#[derive(Debug, Clone)]
pub struct SweepLine {
    /// Legend text, e.g. `batch 128, lr 1e-3`.
    pub label: String,
    /// Validation accuracy per epoch, from epoch 1.
    pub val_accuracy: Vec<f64>,
}

/// Validation accuracy per epoch, one coloured line per sweep setting, with a legend. Written to
/// `path` (`sweep.png`, 900x560 pixels).
///
/// # Errors
/// [`Error::Io`] naming `path` when drawing or writing fails; [`Error::Usage`] when no line has a point.
pub fn sweep_curves(lines: &[SweepLine], path: &Path) -> Result<()> {
    let epochs = lines
        .iter()
        .map(|l| l.val_accuracy.len())
        .max()
        .unwrap_or(0);
    if epochs == 0 {
        return Err(Error::Usage("no sweep epoch to plot".into()));
    }
    let values = lines.iter().flat_map(|l| l.val_accuracy.iter().copied());
    let (lo, hi) = values.fold((1.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.1).max(0.01);
    let (lo, hi) = ((lo - pad).max(0.0), (hi + pad).min(1.0));
    let figure = CurveFigure {
        title: "Sweep: validation accuracy per epoch".into(),
        title_size: 24,
        ylabel: "validation accuracy",
        x: (1.0, (epochs as f64).max(2.0)),
        y: (lo, hi),
        x_labels: epochs.clamp(2, 16),
        legend: SeriesLabelPosition::LowerRight,
        legend_size: 15,
        line: (2, 3),
        band: None,
        y_scientific: false,
        xlabel: "epoch",
        x_log10: false,
        series: lines
            .iter()
            .enumerate()
            .map(|(k, line)| {
                let points = (1..)
                    .map(|i| i as f64)
                    .zip(line.val_accuracy.iter().copied());
                (
                    line.label.as_str(),
                    points.collect(),
                    Palette99::pick(k).to_rgba(),
                )
            })
            .collect(),
    };
    render(path, (900, 560), |root| figure.draw(root, path), |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(epoch: usize, acc: f64, val: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            loss: 2.0 - acc,
            accuracy: acc,
            val_loss: 2.0 - val,
            val_accuracy: val,
            ..EpochMetrics::default()
        }
    }

    fn count(img: &image::RgbImage, c: RGBColor) -> usize {
        img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
    }

    /// A sweep whose last loss shot up 1e5-fold: the chart keeps every point before it as it is and
    /// draws the diverged one at its top edge, with the range set by the rest (up to 1.25x the
    /// highest loss before the lowest, here 1.6 x 1.25 = 2.0); a sweep whose lowest loss comes
    /// early and that rises well past 1.25x before diverging is shown up to its last point; a sweep
    /// without divergence is shown whole.
    #[test]
    fn lr_find_clips_a_diverged_loss_at_the_top() {
        let sweep = [
            (-7.0, 1.5),
            (-6.0, 1.6),
            (-4.0, 1.5),
            (-3.0, 1.4),
            (-2.0, 1.8),
            (-1.5, 1.95),
        ];
        let mut diverged = sweep.to_vec();
        diverged.push((-1.0, 1.0e5));
        let (shown, (y0, y1), cut) = lr_find_view(&diverged);
        assert!(cut);
        assert_eq!(&shown[..6], &sweep);
        assert_eq!(shown.len(), 7);
        assert!((y1 - (2.0 + 0.06)).abs() < 1e-9, "{y1}");
        assert!((y0 - (1.4 - 0.06)).abs() < 1e-9, "{y0}");
        assert_eq!(shown[6], (-1.0, y1));
        // Lowest at the second step, then a rise to 3.5 (1.5x the 2.3 before it), then divergence.
        let early = [
            (-7.0, 2.3),
            (-6.0, 2.0),
            (-5.0, 2.4),
            (-4.0, 2.9),
            (-3.0, 3.5),
            (-2.0, 9.08),
        ];
        let (shown, (_, top), cut) = lr_find_view(&early);
        assert!(cut);
        assert_eq!(&shown[..5], &early[..5]);
        assert!((top - (3.5 + 0.15)).abs() < 1e-9, "{top}");
        assert_eq!(shown[5], (-2.0, top));
        let (whole, (_, top), cut) = lr_find_view(&sweep);
        assert!(!cut);
        assert_eq!(whole, sweep);
        assert!((top - (1.95 + 0.055)).abs() < 1e-9, "{top}");
    }

    #[test]
    fn curves_draw_both_series() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("accuracy.png");
        let h: Vec<_> = (1..=5)
            .map(|e| metrics(e, 0.1 * e as f64, 0.09 * e as f64))
            .collect();
        training_curves(&h, Curve::Accuracy, "validation", &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 500));
        assert!(count(&img, TRAIN_COLOUR) > 200, "training line missing");
        assert!(count(&img, VAL_COLOUR) > 200, "validation line missing");
        // Text was rendered: many pixels that are neither white nor a series colour.
        let dark = img
            .pixels()
            .filter(|p| p.0.iter().all(|&v| v < 100))
            .count();
        assert!(dark > 500, "no text or axes drawn ({dark} dark pixels)");
        // Rising accuracy: the training line's pixels are higher (smaller y) on the right.
        let mean_y = |x0: u32, x1: u32| {
            let ys: Vec<u32> = img
                .enumerate_pixels()
                .filter(|(x, _, p)| *x >= x0 && *x < x1 && p.0 == [31, 119, 180])
                .map(|(_, y, _)| y)
                .collect();
            ys.iter().sum::<u32>() as f64 / ys.len().max(1) as f64
        };
        assert!(mean_y(600, 780) < mean_y(80, 250));
    }

    #[test]
    fn grid_places_images_and_marks_wrong_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("predictions.png");
        let classes: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
        let tiles: Vec<PredictionTile> = (0..10)
            .map(|i| PredictionTile {
                pixels: vec![(i * 20) as u8; 32 * 32 * 3],
                size: 32,
                label: i,
                predicted: if i % 3 == 0 { (i + 1) % 10 } else { i },
                probability: 0.5,
            })
            .collect();
        prediction_grid(&tiles, &classes, &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (5 * CELL_W, GRID_TOP + 2 * CELL_H));
        for (i, t) in tiles.iter().enumerate() {
            let (x, y, side) = tile_origin(i, 5);
            let centre = img.get_pixel(x + side / 2, y + side / 2).0;
            assert_eq!(centre, [t.pixels[0]; 3], "tile {i}");
            // The frame just outside the image: red when wrong, green when right.
            let frame = img.get_pixel(x + side / 2, y - 2).0;
            let want = if t.label == t.predicted {
                RIGHT_COLOUR
            } else {
                WRONG_COLOUR
            };
            assert_eq!(frame, [want.0, want.1, want.2], "frame of tile {i}");
        }
    }

    #[test]
    fn confusion_shades_follow_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("confusion.png");
        let classes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let truth = [0, 0, 0, 0, 1, 1, 2];
        let pred = [0, 0, 0, 1, 1, 2, 2];
        let r = ClassReport::new(&classes, &truth, &pred);
        confusion_matrix(&r, &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        // Cell (0,0) holds the maximum (3): darkest; cell (2,0) holds 0: white.
        let at = |i: u32, j: u32| img.get_pixel(150 + j * 56 + 4, 70 + i * 56 + 4).0;
        assert_eq!(at(0, 0), [8, 48, 107]);
        assert_eq!(at(2, 0), [255, 255, 255]);
        let light = at(0, 1);
        assert!(light[0] > 100 && light[0] < 255, "{light:?}");
        // The title, wider than three cells, ends inside the image: the last 10 columns of its
        // band are white, and the title's band has dark (text) pixels.
        let (w, _) = img.dimensions();
        let band = |xs: std::ops::Range<u32>| {
            xs.flat_map(|x| (12..36).map(move |y| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0[0] < 128)
                .count()
        };
        assert_eq!(band(w - 10..w), 0, "the title runs off the right edge");
        assert!(band(12..w - 10) > 100);
    }

    #[test]
    fn sweep_draws_one_line_per_setting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sweep.png");
        let lines: Vec<SweepLine> = (0..3)
            .map(|k| SweepLine {
                label: format!("batch {}", 32 << k),
                val_accuracy: (1..=6)
                    .map(|e| 0.3 + 0.02 * e as f64 + 0.05 * k as f64)
                    .collect(),
            })
            .collect();
        sweep_curves(&lines, &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (900, 560));
        for k in 0..3 {
            let c = Palette99::pick(k).to_rgba();
            let n = img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
            assert!(n > 100, "line {k} has {n} pixels");
        }
        assert!(sweep_curves(&[], &p).is_err());
    }
}
