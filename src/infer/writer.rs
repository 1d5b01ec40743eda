//! Output formats of `pipe infer`, one record at a time: text (tab-separated lines), CSV (with a
//! header) and one JSON document. A file that could not be decoded is an error record in CSV and JSON
//! (its `error` field, [`crate::data::SkipReason`], instead of a label) and no line in text, whose
//! lines stay `path<TAB>label<TAB>value` (the file is named on stderr). Each writer writes a record
//! when it gets it;
//! JSON, whose summary fields come before the records in its (alphabetically ordered) document,
//! keeps its records in a temporary file until [`RecordWriter::finish`], so that memory does not grow
//! with the number of images either. [`ReportStream`] writes each record as it comes and accumulates
//! the [`InferReport`].

use super::classify::{Prediction, Record};
use super::report::InferReport;
use super::BackendKind;
use crate::contract::Output;
use crate::data::SkippedFile;
use crate::error::{Error, Result};
use crate::onnx::ModelInfo;
use crate::report::top_k;
use serde::Serialize;
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

/// Output format of `pipe infer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One tab-separated line per image.
    Text,
    /// Comma-separated values with a header line (infer only).
    Csv,
    /// One JSON document.
    Json,
}

/// What the writers need to know besides the records.
#[derive(Debug, Clone)]
pub struct WriterContext {
    /// The model file (JSON `model`).
    pub model: PathBuf,
    /// The engine (JSON `backend`).
    pub backend: BackendKind,
    /// Name of the model's output (JSON `output`).
    pub output_name: String,
    /// Class names, index = output column.
    pub classes: Vec<String>,
    /// Label/value pairs per record, most probable first (1..=classes).
    pub top_k: usize,
}

impl WriterContext {
    /// The context for `info`'s model at `model`, run by `backend`, reporting the `top_k` best
    /// classes (clamped to 1..=classes).
    pub fn new(model: &Path, backend: BackendKind, info: &ModelInfo, top_k: usize) -> Self {
        WriterContext {
            model: model.to_path_buf(),
            backend,
            output_name: info.output_name.clone(),
            classes: info.classes.clone(),
            top_k: top_k.clamp(1, info.classes.len()),
        }
    }

    /// `probability`, or `logit` for a logits model: the name of a record's values.
    fn score_name(&self) -> &'static str {
        Output::from_name(&self.output_name).score_name()
    }
}

/// A writer of records in one format.
pub trait RecordWriter {
    /// Writes one record.
    ///
    /// # Errors
    /// The output's I/O error.
    fn record(&mut self, p: &Prediction) -> io::Result<()>;

    /// Writes the record of a file that could not be decoded (nothing, in text).
    ///
    /// # Errors
    /// The output's I/O error.
    fn skipped(&mut self, s: &SkippedFile) -> io::Result<()>;

    /// Writes what follows the last record, given the `report` over all records and the
    /// classification time in `seconds`, and flushes.
    ///
    /// # Errors
    /// The output's I/O error.
    fn finish(&mut self, report: &InferReport, seconds: f64) -> io::Result<()>;
}

/// The writer of `format` over `out`.
///
/// # Errors
/// For JSON, the temporary file for its records cannot be created.
pub fn record_writer<'w>(
    format: OutputFormat,
    out: impl Write + 'w,
    ctx: WriterContext,
) -> io::Result<Box<dyn RecordWriter + 'w>> {
    Ok(match format {
        OutputFormat::Text => Box::new(TextWriter { out, ctx }),
        OutputFormat::Csv => Box::new(CsvWriter {
            out: csv::Writer::from_writer(out),
            ctx,
            header_written: false,
        }),
        OutputFormat::Json => Box::new(JsonWriter {
            out,
            ctx,
            spool: BufWriter::new(tempfile::tempfile()?),
            records: 0,
        }),
    })
}

/// `path<TAB>label<TAB>value` (value with 4 decimals), one more label/value pair per extra top-k class.
struct TextWriter<W> {
    out: W,
    ctx: WriterContext,
}

impl<W: Write> RecordWriter for TextWriter<W> {
    fn record(&mut self, p: &Prediction) -> io::Result<()> {
        write!(self.out, "{}", p.path.display())?;
        for (c, v) in top_k(&p.probabilities, self.ctx.top_k) {
            write!(self.out, "\t{}\t{v:.4}", self.ctx.classes[c])?;
        }
        writeln!(self.out)
    }

    /// Text lines are classified images only: a skipped file is named on stderr.
    fn skipped(&mut self, _: &SkippedFile) -> io::Result<()> {
        Ok(())
    }

    fn finish(&mut self, _: &InferReport, _: f64) -> io::Result<()> {
        self.out.flush()
    }
}

/// A header `path,label,probability,label_2,probability_2,...,error`, then one row per record (values
/// with 6 decimals, `error` empty); a skipped file's row has empty label and value columns and its
/// [`crate::data::SkipReason`] under `error`. The header is written with the first record, so that a
/// failure before any record leaves the output empty.
struct CsvWriter<W: Write> {
    out: csv::Writer<W>,
    ctx: WriterContext,
    header_written: bool,
}

impl<W: Write> CsvWriter<W> {
    fn header(&mut self) -> io::Result<()> {
        if self.header_written {
            return Ok(());
        }
        self.header_written = true;
        let score = self.ctx.score_name();
        let mut header = vec!["path".to_string()];
        for i in 1..=self.ctx.top_k {
            let sfx = if i == 1 {
                String::new()
            } else {
                format!("_{i}")
            };
            header.push(format!("label{sfx}"));
            header.push(format!("{score}{sfx}"));
        }
        header.push("error".into());
        Ok(self.out.write_record(&header)?)
    }
}

impl<W: Write> RecordWriter for CsvWriter<W> {
    fn record(&mut self, p: &Prediction) -> io::Result<()> {
        self.header()?;
        let mut rec = vec![p.path.display().to_string()];
        for (c, v) in top_k(&p.probabilities, self.ctx.top_k) {
            rec.push(self.ctx.classes[c].clone());
            rec.push(format!("{v:.6}"));
        }
        rec.push(String::new());
        Ok(self.out.write_record(&rec)?)
    }

    fn skipped(&mut self, s: &SkippedFile) -> io::Result<()> {
        self.header()?;
        let mut rec = vec![s.path.display().to_string()];
        rec.resize(1 + 2 * self.ctx.top_k, String::new());
        rec.push(s.reason.as_str().into());
        Ok(self.out.write_record(&rec)?)
    }

    fn finish(&mut self, _: &InferReport, _: f64) -> io::Result<()> {
        self.header()?;
        self.out.flush()
    }
}

/// One JSON document with the keys in alphabetical order: `accuracy`, `backend`,
/// `balanced_accuracy`, `classes`, `confusion`, `correct`, `labelled`, `macro_f1`, `model`, `output`,
/// `predictions` (the records, each the [`Prediction`] plus its `top_k` list, or for a file that
/// could not be decoded `{path, error, message}`: its [`crate::data::SkipReason`] and what is
/// wrong), `recall` (per class, in the order of `classes`) and `seconds`, then a newline. The
/// accuracy figures ([`crate::report::ClassReport`]'s) are `null` without labelled images.
struct JsonWriter<W> {
    out: W,
    ctx: WriterContext,
    /// The records written so far, comma-separated.
    spool: BufWriter<std::fs::File>,
    records: usize,
}

impl<W> JsonWriter<W> {
    /// A record as JSON: the prediction's fields and `top_k`, a list of `{class_index, label,
    /// probability|logit}`. Goes through `serde_json::Value` so that float32 values print as their
    /// float64 widening, as the document always had them.
    fn record_value(&self, p: &Prediction) -> io::Result<serde_json::Value> {
        let score = self.ctx.score_name();
        let top: Vec<serde_json::Value> = top_k(&p.probabilities, self.ctx.top_k)
            .into_iter()
            .map(|(c, v)| {
                let mut entry = serde_json::Map::new();
                entry.insert("class_index".into(), c.into());
                entry.insert("label".into(), self.ctx.classes[c].clone().into());
                entry.insert(score.into(), v.into());
                serde_json::Value::Object(entry)
            })
            .collect();
        let mut v = serde_json::to_value(p)?;
        v["top_k"] = serde_json::Value::Array(top);
        Ok(v)
    }
}

/// Writes `"key":value` (compact JSON), preceded by a comma unless `first`.
fn field(out: &mut impl Write, first: bool, key: &str, value: &impl Serialize) -> io::Result<()> {
    if !first {
        out.write_all(b",")?;
    }
    serde_json::to_writer(&mut *out, key)?;
    out.write_all(b":")?;
    Ok(serde_json::to_writer(&mut *out, value)?)
}

impl<W> JsonWriter<W> {
    /// Appends one record to the spool.
    fn spool_record(&mut self, v: &serde_json::Value) -> io::Result<()> {
        if self.records > 0 {
            self.spool.write_all(b",")?;
        }
        self.records += 1;
        Ok(serde_json::to_writer(&mut self.spool, v)?)
    }
}

impl<W: Write> RecordWriter for JsonWriter<W> {
    fn record(&mut self, p: &Prediction) -> io::Result<()> {
        let v = self.record_value(p)?;
        self.spool_record(&v)
    }

    fn skipped(&mut self, s: &SkippedFile) -> io::Result<()> {
        let v = serde_json::json!({
            "error": s.reason,
            "message": s.message,
            "path": s.path.to_string_lossy(),
        });
        self.spool_record(&v)
    }

    fn finish(&mut self, report: &InferReport, seconds: f64) -> io::Result<()> {
        let out = &mut self.out;
        let ctx = &self.ctx;
        let metrics = (report.labelled > 0).then(|| report.class_report());
        out.write_all(b"{")?;
        field(out, true, "accuracy", &report.accuracy())?;
        field(out, false, "backend", &ctx.backend)?;
        let balanced = metrics.as_ref().map(|m| m.balanced_accuracy);
        field(out, false, "balanced_accuracy", &balanced)?;
        field(out, false, "classes", &ctx.classes)?;
        let confusion = (report.labelled > 0).then_some(&report.confusion);
        field(out, false, "confusion", &confusion)?;
        field(out, false, "correct", &report.correct)?;
        field(out, false, "labelled", &report.labelled)?;
        field(
            out,
            false,
            "macro_f1",
            &metrics.as_ref().map(|m| m.macro_f1),
        )?;
        field(out, false, "model", &ctx.model.to_string_lossy())?;
        field(out, false, "output", &ctx.output_name)?;
        out.write_all(b",\"predictions\":[")?;
        self.spool.flush()?;
        let spool = self.spool.get_mut();
        spool.rewind()?;
        io::copy(spool, out)?;
        out.write_all(b"]")?;
        field(out, false, "recall", &metrics.as_ref().map(|m| &m.recall))?;
        field(out, false, "seconds", &seconds)?;
        out.write_all(b"}\n")?;
        out.flush()
    }
}

/// Writes each [`Prediction`] to an output in an [`OutputFormat`] as it comes and accumulates the
/// [`InferReport`]; [`ReportStream::finish`] closes the output (for JSON: the document's summary
/// fields) and returns the report.
pub struct ReportStream<'w> {
    writer: Box<dyn RecordWriter + 'w>,
    report: InferReport,
    sink: PathBuf,
}

impl<'w> ReportStream<'w> {
    /// A stream of records in `format` to `out`, named `sink` in I/O errors (the output file, or
    /// `stdout`).
    ///
    /// # Errors
    /// [`Error::Io`] when the format's buffers cannot be set up (JSON keeps its records in a temporary
    /// file until the summary fields that precede them are known).
    pub fn new(
        format: OutputFormat,
        out: impl Write + 'w,
        sink: &Path,
        ctx: WriterContext,
    ) -> Result<Self> {
        let report = InferReport::new(&ctx.classes);
        let writer = record_writer(format, out, ctx).map_err(|e| Error::io(sink, e))?;
        Ok(ReportStream {
            writer,
            report,
            sink: sink.to_path_buf(),
        })
    }

    /// Counts `r` and writes it: a prediction, or the error record of a skipped file.
    ///
    /// # Errors
    /// [`Error::Io`] naming the sink.
    pub fn push(&mut self, r: &Record) -> Result<()> {
        self.report.add_record(r);
        match r {
            Record::Classified(p) => self.writer.record(p),
            Record::Skipped(s) => self.writer.skipped(s),
        }
        .map_err(|e| Error::io(&self.sink, e))
    }

    /// Writes what follows the last record (`seconds`: the classification time, in the JSON
    /// document), flushes, and returns the report.
    ///
    /// # Errors
    /// [`Error::Io`] naming the sink.
    pub fn finish(mut self, seconds: f64) -> Result<InferReport> {
        self.writer
            .finish(&self.report, seconds)
            .map_err(|e| Error::io(&self.sink, e))?;
        Ok(self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SkipReason;
    use crate::infer::Record;

    fn ctx(output_name: &str, top_k: usize) -> WriterContext {
        WriterContext {
            model: "m.onnx".into(),
            backend: BackendKind::Tract,
            output_name: output_name.into(),
            classes: vec!["cat".into(), "dog".into(), "frog".into()],
            top_k,
        }
    }

    fn predictions() -> Vec<Prediction> {
        [
            ("t/cat/a.png", [0.7f32, 0.2, 0.1]),
            ("t/dog/b.png", [0.5, 0.1, 0.4]),
        ]
        .into_iter()
        .map(|(path, row)| Prediction {
            path: path.into(),
            class_index: 0,
            label: "cat".into(),
            probability: row[0],
            probabilities: row.to_vec(),
        })
        .collect()
    }

    fn cut() -> SkippedFile {
        SkippedFile {
            path: "t/dog/cut.jpg".into(),
            reason: SkipReason::Truncated,
            message: "truncated JPEG: the data ends early".into(),
        }
    }

    /// The two predictions, with the skipped `cut()` between them when `with_skipped`.
    fn write_records(format: OutputFormat, ctx: WriterContext, with_skipped: bool) -> String {
        let mut records: Vec<Record> = predictions().into_iter().map(Record::Classified).collect();
        if with_skipped {
            records.insert(1, Record::Skipped(cut()));
        }
        let mut buf = Vec::new();
        let mut report = InferReport::new(&ctx.classes);
        let mut w = record_writer(format, &mut buf, ctx).unwrap();
        for r in &records {
            report.add_record(r);
            match r {
                Record::Classified(p) => w.record(p).unwrap(),
                Record::Skipped(s) => w.skipped(s).unwrap(),
            }
        }
        w.finish(&report, 1.5).unwrap();
        drop(w);
        String::from_utf8(buf).unwrap()
    }

    fn write(format: OutputFormat, ctx: WriterContext) -> String {
        write_records(format, ctx, false)
    }

    #[test]
    fn text_and_csv_write_one_line_per_record() {
        assert_eq!(
            write(OutputFormat::Text, ctx("probabilities", 2)),
            "t/cat/a.png\tcat\t0.7000\tdog\t0.2000\nt/dog/b.png\tcat\t0.5000\tfrog\t0.4000\n"
        );
        assert_eq!(
            write(OutputFormat::Csv, ctx("logits", 1)),
            "path,label,logit,error\nt/cat/a.png,cat,0.700000,\nt/dog/b.png,cat,0.500000,\n"
        );
    }

    /// A skipped file: no text line; in CSV, empty label and value columns and its reason under
    /// `error`; in JSON, `{error, message, path}` in its place among the records.
    #[test]
    fn skipped_files_are_error_records_in_csv_and_json_and_absent_from_text() {
        assert_eq!(
            write_records(OutputFormat::Text, ctx("probabilities", 1), true),
            write(OutputFormat::Text, ctx("probabilities", 1))
        );
        assert_eq!(
            write_records(OutputFormat::Csv, ctx("probabilities", 2), true),
            "path,label,probability,label_2,probability_2,error\n\
             t/cat/a.png,cat,0.700000,dog,0.200000,\n\
             t/dog/cut.jpg,,,,,truncated\n\
             t/dog/b.png,cat,0.500000,frog,0.400000,\n"
        );
        let doc: serde_json::Value = serde_json::from_str(&write_records(
            OutputFormat::Json,
            ctx("probabilities", 1),
            true,
        ))
        .unwrap();
        let records = doc["predictions"].as_array().unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[1],
            serde_json::json!({
                "path": "t/dog/cut.jpg", "error": "truncated",
                "message": "truncated JPEG: the data ends early",
            })
        );
        assert_eq!(records[2]["path"], "t/dog/b.png");
        assert_eq!(doc["labelled"], 2, "skipped files are not labelled images");
    }

    /// The streamed document equals the one serde_json makes of the whole value at once.
    #[test]
    fn json_streams_the_same_document_as_one_value() {
        let got = write(OutputFormat::Json, ctx("probabilities", 1));
        let preds: Vec<serde_json::Value> = predictions()
            .iter()
            .map(|p| {
                let mut v = serde_json::to_value(p).unwrap();
                v["top_k"] = serde_json::json!([
                    {"class_index": 0, "label": "cat", "probability": p.probabilities[0]}
                ]);
                v
            })
            .collect();
        let want = serde_json::json!({
            "model": "m.onnx", "backend": "tract", "output": "probabilities",
            "classes": ["cat", "dog", "frog"], "predictions": preds, "labelled": 2, "correct": 1,
            "accuracy": 0.5, "confusion": [[1, 0, 0], [1, 0, 0], [0, 0, 0]], "seconds": 1.5,
            // By hand: recall cat 1/1, dog 0/1 (frog has no image); balanced (1 + 0) / 2; F1 cat
            // 2 * 0.5 * 1 / 1.5 (precision 1/2), dog 0, frog left out (no image, no prediction).
            "recall": [1.0, 0.0, 0.0], "balanced_accuracy": 0.5, "macro_f1": 1.0 / 3.0,
        });
        assert_eq!(got, format!("{}\n", serde_json::to_string(&want).unwrap()));
    }
}
