//! Bad input and faults: every error case names the file, says what is wrong (and what to do), exits
//! with code 1 and leaves no partial output; unusual but valid images take the right decoding path.
//! `tests/README.md` maps each case of the list to its test here.
//!
//! Images go through `pipe infer` with a tiny generated ONNX model whose output is its input
//! (`images` [N,4,4,3] → Flatten → [N,48]): `--format json` then shows exactly the pixels pipe decoded,
//! converted and resized. Training cases use a generated CIFAR-10 binary release or generated image
//! folders (and the real VGG16 weights of `make setup` where training has to start).
#![cfg(all(feature = "train", feature = "tract", feature = "ort"))]

mod common;

use common::{fails, log, ok, pipe, pipe_command, s, tmp_files, weights, write_binary_release};
use prost::Message;
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tract_onnx::pb;

/// Side of the identity model's input.
const S: usize = 4;

fn value_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => Dim::DimValue(*v),
                                None => Dim::DimParam("N".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An ONNX model `input_name` `input_dims` → Flatten → `probabilities` [N, 48], with class names `c0`..`c47`
/// in its metadata when `with_classes`.
fn flatten_model(input_name: &str, input_dims: &[Option<i64>], with_classes: bool) -> Vec<u8> {
    let classes: Vec<String> = (0..S * S * 3).map(|i| format!("c{i}")).collect();
    let graph = pb::GraphProto {
        name: "identity".into(),
        node: vec![pb::NodeProto {
            op_type: "Flatten".into(),
            name: "flatten".into(),
            input: vec![input_name.into()],
            output: vec!["probabilities".into()],
            attribute: vec![pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            }],
            ..Default::default()
        }],
        input: vec![value_info(input_name, input_dims)],
        output: vec![value_info(
            "probabilities",
            &[None, Some((S * S * 3) as i64)],
        )],
        ..Default::default()
    };
    let metadata_props = if with_classes {
        vec![pb::StringStringEntryProto {
            key: "classes".into(),
            value: serde_json::to_string(&classes).unwrap(),
        }]
    } else {
        Vec::new()
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "pipe tests".into(),
        graph: Some(graph),
        metadata_props,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Writes the identity model (`images` [N,4,4,3] float → [N,48], class names in the metadata) to `dir`.
fn identity_model(dir: &Path) -> PathBuf {
    let p = dir.join("identity.onnx");
    let s = Some(S as i64);
    std::fs::write(&p, flatten_model("images", &[None, s, s, Some(3)], true)).unwrap();
    p
}

/// `pipe infer --format json` on `inputs`: per image its printed path and the 48 values the model saw
/// (4x4 RGB, HWC); plus stderr.
fn infer_pixels<P: AsRef<OsStr>>(model: &Path, inputs: &[P]) -> (Vec<(String, Vec<f32>)>, String) {
    let mut args: Vec<OsString> = ["infer", "--format", "json", "--model"]
        .iter()
        .map(OsString::from)
        .collect();
    args.push(model.into());
    args.extend(inputs.iter().map(|p| p.as_ref().to_os_string()));
    let (stdout, stderr) = ok(&args);
    let doc: Value = serde_json::from_str(&stdout).expect("json output");
    let preds = doc["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| {
            (
                p["path"].as_str().expect("path").to_string(),
                p["probabilities"]
                    .as_array()
                    .expect("probabilities")
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect(),
            )
        })
        .collect();
    (preds, stderr)
}

/// `pipe infer -o DIR/out.json` on `inputs` must exit with 1, name the file, and leave no output and
/// no temporary file; returns stderr.
fn infer_refused(model: &Path, inputs: &[&Path], must_contain: &[&str]) -> String {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.json");
    let mut args: Vec<&OsStr> = vec![
        "infer".as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
    ];
    args.extend(inputs.iter().map(|p| p.as_os_str()));
    let err = fails(&args);
    for m in must_contain {
        assert!(err.contains(m), "stderr lacks {m:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "no output file on error");
    assert_eq!(
        std::fs::read_dir(out_dir.path()).unwrap().count(),
        0,
        "nothing left in the output folder"
    );
    err
}

fn png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

fn jpeg_bytes(img: &image::RgbImage) -> Vec<u8> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 100)
        .encode_image(img)
        .unwrap();
    buf
}

/// `n` times the RGB triple `px`.
fn repeat(px: [f32; 3], n: usize) -> Vec<f32> {
    std::iter::repeat_n(px, n).flatten().collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}: value {i} is {g}, expected {w}: {got:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------------

#[test]
fn zero_byte_image_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let good = dir.path().join("good.png");
    png(&good, 4, 4, |_, _| [1, 2, 3]);
    infer_refused(
        &model,
        &[&good, &empty],
        &["empty.jpg", "empty file (0 bytes)"],
    );
}

#[test]
fn truncated_jpeg_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 99])
    });
    let bytes = jpeg_bytes(&img);
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    infer_refused(&model, &[&cut], &["cut.jpg", "truncated"]);
}

#[test]
fn text_file_named_jpg_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let fake = dir.path().join("notes.jpg");
    std::fs::write(&fake, "shopping list: milk, eggs\n").unwrap();
    infer_refused(
        &model,
        &[&fake],
        &["notes.jpg", "not an image", "JPEG, PNG"],
    );
}

#[test]
fn unsupported_format_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    // An AVIF header (ISO-BMFF `ftyp` box, brand avif): recognised, but not a format pipe decodes.
    let avif = dir.path().join("photo.avif");
    let mut bytes = vec![0, 0, 0, 0x1c];
    bytes.extend(b"ftypavif\0\0\0\0avifmif1miaf");
    bytes.resize(64, 0);
    std::fs::write(&avif, &bytes).unwrap();
    infer_refused(
        &model,
        &[&avif],
        &["photo.avif", "unsupported image format", "JPEG, PNG"],
    );
}

#[test]
fn grayscale_png_is_replicated_to_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let gray = dir.path().join("gray.png");
    image::GrayImage::from_pixel(4, 4, image::Luma([77]))
        .save(&gray)
        .unwrap();
    let gray_alpha = dir.path().join("gray_alpha.png");
    image::GrayAlphaImage::from_pixel(4, 4, image::LumaA([200, 10]))
        .save(&gray_alpha)
        .unwrap();
    let (preds, _) = infer_pixels(&model, &[&gray, &gray_alpha]);
    assert_eq!(preds[0].1, vec![77.0; 48]);
    assert_eq!(preds[1].1, vec![200.0; 48], "alpha dropped, not blended");
}

#[test]
fn rgba_png_drops_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let p = dir.path().join("rgba.png");
    image::RgbaImage::from_pixel(4, 4, image::Rgba([10, 20, 30, 0]))
        .save(&p)
        .unwrap();
    let (preds, _) = infer_pixels(&model, &[&p]);
    // As Keras' load_img (PIL convert("RGB")): the colour stays, transparency is ignored.
    assert_eq!(preds[0].1, repeat([10.0, 20.0, 30.0], 16));
}

#[test]
fn sixteen_bit_png_is_scaled_to_eight_bits() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let p = dir.path().join("deep.png");
    image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
        4,
        4,
        image::Rgb([65535, 32896, 0]),
    )
    .save(&p)
    .unwrap();
    let (preds, _) = infer_pixels(&model, &[&p]);
    // 65535 → 255, 32896 = 128 * 257 → 128, 0 → 0.
    assert_eq!(preds[0].1, repeat([255.0, 128.0, 0.0], 16));
}

#[test]
fn cmyk_jpeg_is_converted_to_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let p = common::root().join("tests/data/cmyk-cyan-yellow-16x8.jpg");
    let (preds, _) = infer_pixels(&model, &[&p]);
    // 16x8 resized to 4x4: column 0 cyan (0,255,255), column 3 yellow (255,255,0); the bilinear
    // filter blends the middle columns.
    let px = &preds[0].1;
    for y in 0..4 {
        for x in [0, 3] {
            let i = (y * 4 + x) * 3;
            let want = if x == 0 {
                [0.0, 255.0, 255.0]
            } else {
                [255.0, 255.0, 0.0]
            };
            assert_close(&px[i..i + 3], &want, 12.0, &format!("pixel ({x},{y})"));
        }
    }
}

#[test]
fn one_pixel_image_is_resized_to_the_model_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let p = dir.path().join("dot.png");
    png(&p, 1, 1, |_, _| [200, 100, 50]);
    let big = dir.path().join("wide.png");
    png(
        &big,
        40,
        4,
        |x, _| if x < 20 { [255, 0, 0] } else { [0, 0, 255] },
    );
    let (preds, _) = infer_pixels(&model, &[&p, &big]);
    assert_eq!(preds[0].1, repeat([200.0, 100.0, 50.0], 16));
    // A 40x4 image is squeezed to 4x4 (no crop): left half red, right half blue.
    assert_eq!(&preds[1].1[..3], &[255.0, 0.0, 0.0]);
    assert_eq!(&preds[1].1[9..12], &[0.0, 0.0, 255.0]);
}

/// CRC-32 (IEEE) as PNG chunks need it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend(data);
    out.extend(&body);
    out.extend(crc32(&body).to_be_bytes());
}

#[test]
fn decompression_bomb_header_is_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    // A valid PNG header announcing 20000x20000 RGB (1.2 GB decoded), then a few bytes of data.
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(20000u32.to_be_bytes());
    ihdr.extend(20000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png_chunk(&mut bytes, b"IHDR", &ihdr);
    png_chunk(
        &mut bytes,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut bytes, b"IEND", &[]);
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, &bytes).unwrap();
    // The process may not allocate more than 1 GB of data: were the image allocated, pipe would abort
    // instead of exiting with a message.
    let out_dir = tempfile::tempdir().unwrap();
    let out_file = out_dir.path().join("out.json");
    let args = [
        OsStr::new("infer"),
        "-o".as_ref(),
        out_file.as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
        bomb.as_os_str(),
    ];
    let mut cmd = pipe_command(&args);
    // SAFETY: only an async-signal-safe setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    log(&args, &out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bomb.png") && err.contains("20000x20000") && err.contains("limit"),
        "{err}"
    );
    assert!(!out_file.exists());
}

/// Inserts an EXIF APP1 segment with the given orientation right after a JPEG's SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec(); // big-endian TIFF header, IFD at offset 8
    tiff.extend(1u16.to_be_bytes()); // one entry
    tiff.extend(0x0112u16.to_be_bytes()); // Orientation
    tiff.extend(3u16.to_be_bytes()); // SHORT
    tiff.extend(1u32.to_be_bytes()); // count
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0]);
    tiff.extend(0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xff, 0xe1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    // Stored 16x8: left half red, right half blue. Orientation 6 = rotate 90° clockwise to display:
    // the displayed image is 8x16 with red on top and blue below.
    let img = image::RgbImage::from_fn(16, 8, |x, _| {
        image::Rgb(if x < 8 { [255, 0, 0] } else { [0, 0, 255] })
    });
    let plain = jpeg_bytes(&img);
    let rotated = dir.path().join("rotated.jpg");
    std::fs::write(&rotated, with_exif_orientation(&plain, 6)).unwrap();
    let upright = dir.path().join("upright.jpg");
    std::fs::write(&upright, with_exif_orientation(&plain, 1)).unwrap();
    let (preds, _) = infer_pixels(&model, &[&rotated, &upright]);
    let red = [255.0, 0.0, 0.0];
    let blue = [0.0, 0.0, 255.0];
    let px = |p: &[f32], x: usize, y: usize| p[(y * 4 + x) * 3..(y * 4 + x) * 3 + 3].to_vec();
    // Rotated: rows 0-1 red, rows 2-3 blue.
    assert_close(&px(&preds[0].1, 0, 0), &red, 16.0, "rotated top-left");
    assert_close(&px(&preds[0].1, 3, 0), &red, 16.0, "rotated top-right");
    assert_close(&px(&preds[0].1, 0, 3), &blue, 16.0, "rotated bottom-left");
    // Orientation 1: as stored, columns 0-1 red, columns 2-3 blue.
    assert_close(&px(&preds[1].1, 0, 3), &red, 16.0, "upright bottom-left");
    assert_close(&px(&preds[1].1, 3, 0), &blue, 16.0, "upright top-right");
}

#[test]
fn file_names_with_spaces_and_non_utf8_bytes_work_and_print_lossily() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let folder = dir.path().join("my photos");
    std::fs::create_dir(&folder).unwrap();
    png(&folder.join("a b.png"), 4, 4, |_, _| [255, 0, 0]);
    let latin1 = folder.join(OsStr::from_bytes(b"caf\xe9.png"));
    png(&latin1, 4, 4, |_, _| [0, 0, 255]);
    let (preds, _) = infer_pixels(&model, &[&folder]);
    assert_eq!(preds.len(), 2);
    assert!(preds[0].0.ends_with("my photos/a b.png"), "{}", preds[0].0);
    assert_eq!(preds[0].1, repeat([255.0, 0.0, 0.0], 16));
    assert!(
        preds[1].0.ends_with("my photos/caf\u{fffd}.png"),
        "{}",
        preds[1].0
    );
    assert_eq!(preds[1].1, repeat([0.0, 0.0, 255.0], 16));
    // Text and csv name the same files, one line each; the non-UTF-8 file can be passed by name.
    let (text, _) = ok(&[
        OsStr::new("infer"),
        "--model".as_ref(),
        model.as_os_str(),
        latin1.as_os_str(),
        folder.join("a b.png").as_os_str(),
    ]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("caf\u{fffd}.png\tc2\t255.0000"), "{text}");
    assert!(lines[1].contains("a b.png\tc0\t255.0000"), "{text}");
    let (csv, _) = ok(&[
        OsStr::new("infer"),
        "--format".as_ref(),
        "csv".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        folder.as_os_str(),
    ]);
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.contains("a b.png,c0,255"), "{csv}");
}

#[test]
fn symlink_loop_is_reported_not_followed_forever() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let folder = dir.path().join("imgs");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    png(&folder.join("sub/one.png"), 4, 4, |_, _| [9, 9, 9]);
    std::os::unix::fs::symlink("..", folder.join("sub/back")).unwrap();
    let args = [
        OsStr::new("infer"),
        "--model".as_ref(),
        model.as_os_str(),
        folder.as_os_str(),
    ];
    let mut child = pipe_command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("pipe infer did not finish on a folder with a symlink loop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    log(&args, &out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("symlink loop") && err.contains("back"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "the one image, once: {stdout}");
    assert!(
        stdout.starts_with(&format!("{}/sub/one.png\t", folder.display())),
        "{stdout}"
    );
}

#[test]
fn empty_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let empty = dir.path().join("nothing here");
    std::fs::create_dir(&empty).unwrap();
    infer_refused(&model, &[&empty], &["no image files", "nothing here"]);
}

#[test]
fn non_image_files_are_skipped_with_a_counted_warning() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let folder = dir.path().join("mixed");
    std::fs::create_dir(&folder).unwrap();
    for f in ["notes.txt", "labels.csv", "drawing.svg"] {
        std::fs::write(folder.join(f), "not an image").unwrap();
    }
    // Only other files: an error that says what was skipped.
    let err = infer_refused(&model, &[&folder], &["no image files", "mixed"]);
    assert!(err.contains("3 files that are not images"), "{err}");
    // With one image among them: classified, and the others counted in a warning.
    png(&folder.join("cat.png"), 4, 4, |_, _| [5, 6, 7]);
    let (preds, stderr) = infer_pixels(&model, &[&folder]);
    assert_eq!(preds.len(), 1);
    assert!(
        stderr.contains("warning: skipped 3 files that are not images"),
        "{stderr}"
    );
    assert!(
        stderr.contains("drawing.svg"),
        "an example is named: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------------

/// `pipe train` arguments for `data` into `runs` with small settings.
fn train_args(data: &Path, runs: &Path, weights: &str) -> Vec<OsString> {
    [
        "train",
        "--data",
        s(data),
        "--weights",
        weights,
        "--runs-dir",
        s(runs),
        "--train-limit",
        "0",
        "--test-limit",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--no-cache",
        "--name",
        "r",
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

/// `args` with `--option value` pairs replaced (or added).
fn with(mut args: Vec<OsString>, pairs: &[&str]) -> Vec<OsString> {
    for pair in pairs.chunks(2) {
        match args.iter().position(|a| a == pair[0]) {
            Some(i) => args[i + 1] = pair[1].into(),
            None => args.extend(pair.iter().map(OsString::from)),
        }
    }
    args
}

/// Image folders `root/<split>/<class>/<i>.png` (32x32, class-coloured), `n` images per class.
fn image_folders(root: &Path, split: &str, classes: &[&str], n: usize) {
    for (c, class) in classes.iter().enumerate() {
        let d = root.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            png(&d.join(format!("{i}.png")), 32, 32, |x, y| {
                [(c * 90) as u8, (x * 8) as u8 ^ (i as u8), (y * 8) as u8]
            });
        }
    }
}

/// Asserts that a refused training left no run behind.
fn no_run(runs: &Path) {
    assert!(!runs.join("r").exists(), "no run folder on error");
    assert!(!runs.join("latest").exists());
}

#[test]
fn training_folder_with_one_class_or_none_is_refused() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let one = tmp.path().join("one");
    image_folders(&one, "train", &["cat"], 2);
    image_folders(&one, "test", &["cat"], 2);
    let err = fails(&train_args(&one, &runs, &w));
    assert!(
        err.contains("one/train") && err.contains("at least 2 classes, found 1"),
        "{err}"
    );
    no_run(&runs);
    let none = tmp.path().join("none");
    std::fs::create_dir_all(none.join("train")).unwrap();
    std::fs::create_dir_all(none.join("test")).unwrap();
    let err = fails(&train_args(&none, &runs, &w));
    assert!(
        err.contains("none/train") && err.contains("no class sub-folders"),
        "{err}"
    );
    no_run(&runs);
    let err = fails(&train_args(&tmp.path().join("missing"), &runs, &w));
    assert!(
        err.contains("missing") && err.contains("make setup"),
        "{err}"
    );
}

#[test]
fn train_and_test_class_folders_must_match() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let data = tmp.path().join("data");
    image_folders(&data, "train", &["cat", "dog"], 2);
    image_folders(&data, "test", &["bird", "cat"], 2);
    let err = fails(&train_args(&data, &runs, &w));
    assert!(
        err.contains("class folders differ") && err.contains("dog") && err.contains("bird"),
        "{err}"
    );
    no_run(&runs);
}

#[test]
fn truncated_cifar_binary_is_refused_by_name() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bin");
    write_binary_release(&data, 10);
    let f = data.join("test_batch.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 1000]).unwrap();
    let runs = tmp.path().join("runs");
    let err = fails(&train_args(&data, &runs, &w));
    assert!(
        err.contains("test_batch.bin")
            && err.contains("not a whole number")
            && err.contains("truncated"),
        "{err}"
    );
    no_run(&runs);
}

#[test]
fn cifar_label_byte_out_of_range_is_refused_by_name() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bin");
    write_binary_release(&data, 10);
    let f = data.join("data_batch_2.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[3 * 3073] = 10; // label byte of record 3
    std::fs::write(&f, &bytes).unwrap();
    let runs = tmp.path().join("runs");
    let err = fails(&train_args(&data, &runs, &w));
    assert!(
        err.contains("data_batch_2.bin") && err.contains("record 3 has label 10"),
        "{err}"
    );
    no_run(&runs);
}

#[test]
fn train_limit_larger_than_the_data_is_refused() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bin");
    write_binary_release(&data, 10);
    let runs = tmp.path().join("runs");
    let err = fails(&with(
        train_args(&data, &runs, &w),
        &["--train-limit", "5000"],
    ));
    assert!(
        err.contains("--train-limit 5000 exceeds the 50 images") && err.contains("use 0 for all"),
        "{err}"
    );
    no_run(&runs);
}

#[test]
fn odd_folders_train_with_warnings_and_auto_device() {
    // Image folders with a space in a class name, a non-UTF-8 file name and non-image files: training
    // works, skipped files are counted, and `--device auto` falls back to the CPU without CUDA.
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folders(&data, "train", &["big cat", "dog"], 3);
    image_folders(&data, "test", &["big cat", "dog"], 2);
    png(
        &data
            .join("test/dog")
            .join(OsStr::from_bytes(b"\xffodd.png")),
        32,
        32,
        |_, _| [1, 2, 3],
    );
    std::fs::write(data.join("train/dog/notes.txt"), "x").unwrap();
    std::fs::write(data.join("test/big cat/Thumbs.db"), "x").unwrap();
    let runs = tmp.path().join("runs");
    let mut args = train_args(&data, &runs, &w);
    let i = args.iter().position(|a| a == "cpu").unwrap();
    args[i] = "auto".into();
    let (_, err) = ok(&args);
    assert!(
        err.contains("data/train: skipped 1 file that is not an image")
            && err.contains("data/test: skipped 1 file that is not an image"),
        "{err}"
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(runs.join("r/config.json")).unwrap()).unwrap();
    assert_eq!(config["classes"], serde_json::json!(["big cat", "dog"]));
    assert_eq!(config["train_images"], 6);
    assert_eq!(config["test_images"], 5);
    let cuda = Command::new("nvidia-smi")
        .output()
        .is_ok_and(|o| o.status.success());
    if !cuda {
        assert_eq!(
            config["device"], "cpu",
            "--device auto falls back to the CPU"
        );
    }
    let preds: Value =
        serde_json::from_slice(&std::fs::read(runs.join("r/predictions.json")).unwrap()).unwrap();
    let files: Vec<&str> = preds["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["file"].as_str().unwrap())
        .collect();
    assert!(files.contains(&"dog/\u{fffd}odd.png"), "{files:?}");
}

// ---------------------------------------------------------------------------------------------------
// Weights and models
// ---------------------------------------------------------------------------------------------------

#[test]
fn missing_weights_file_says_make_setup() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bin");
    write_binary_release(&data, 10);
    let runs = tmp.path().join("runs");
    let missing = tmp.path().join("vgg16_imagenet.safetensors");
    let err = fails(&train_args(&data, &runs, s(&missing)));
    assert!(
        err.contains(s(&missing)) && err.contains("not found") && err.contains("make setup"),
        "{err}"
    );
    no_run(&runs);
}

#[test]
fn weights_with_a_wrong_shape_or_format_are_refused() {
    use pipe::weights::{save_safetensors, NamedTensor};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bin");
    write_binary_release(&data, 10);
    let runs = tmp.path().join("runs");
    let bad = tmp.path().join("bad.safetensors");
    save_safetensors(
        &bad,
        &[NamedTensor {
            name: "base.block1_conv1.weight".into(),
            shape: vec![64, 3, 3, 1],
            data: vec![0.0; 64 * 9],
        }],
        Default::default(),
    )
    .unwrap();
    let err = fails(&train_args(&data, &runs, s(&bad)));
    assert!(
        err.contains("bad.safetensors")
            && err.contains(
                "\"base.block1_conv1.weight\" has shape [64, 3, 3, 1], expected [64, 3, 3, 3]"
            ),
        "{err}"
    );
    no_run(&runs);
    // A half-copied weights file.
    let real = std::fs::read(weights()).unwrap();
    let half = tmp.path().join("half.safetensors");
    std::fs::write(&half, &real[..real.len() / 2]).unwrap();
    let err = fails(&train_args(&data, &runs, s(&half)));
    assert!(
        err.contains("half.safetensors") && err.contains("not a valid safetensors file"),
        "{err}"
    );
    no_run(&runs);
}

#[test]
fn export_of_a_missing_or_half_written_run_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let out = tmp.path().join("onnx/model.onnx");
    let export = |run: &str| {
        let err = fails(&["export", s(&out), "--run", run, "--runs-dir", s(&runs)]);
        assert!(!out.exists(), "no model written");
        assert!(tmp_files(&tmp.path().join("onnx")).is_empty());
        err
    };
    let err = export("latest");
    assert!(
        err.contains("no training run yet") && err.contains("pipe train"),
        "{err}"
    );
    let err = export("nope");
    assert!(
        err.contains("runs/nope") && err.contains("no such run"),
        "{err}"
    );
    // config.json written, killed before the head: unfinished, with the resume command.
    let run = runs.join("half");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.json"), b"{}").unwrap();
    let err = export("half");
    assert!(
        err.contains("unfinished run")
            && err.contains("head.safetensors is missing")
            && err.contains("--resume"),
        "{err}"
    );
}

#[test]
fn foreign_onnx_models_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.png");
    png(&img, 4, 4, |_, _| [1, 1, 1]);
    let s4 = Some(S as i64);
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "x_input.onnx",
            flatten_model("x", &[None, s4, s4, Some(3)], true),
            "not a single `images` input",
        ),
        (
            "nchw.onnx",
            flatten_model("images", &[None, Some(3), Some(32), Some(32)], true),
            "expected [N,S,S,3]",
        ),
        (
            "no_shape.onnx",
            flatten_model("images", &[None, None, None, None], true),
            "expected [N,S,S,3]",
        ),
    ];
    for (name, bytes, what) in cases {
        let model = dir.path().join(name);
        std::fs::write(&model, bytes).unwrap();
        for backend in ["tract", "ort"] {
            let out = pipe(&[
                OsStr::new("infer"),
                "--backend".as_ref(),
                backend.as_ref(),
                "--model".as_ref(),
                model.as_os_str(),
                img.as_os_str(),
            ]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(
                err.contains(name) && err.contains(what) && err.contains("pipe export"),
                "{err}"
            );
            assert!(out.stdout.is_empty());
        }
        let err = fails(&[OsStr::new("inspect"), model.as_os_str()]);
        assert!(err.contains(name) && err.contains(what), "{err}");
    }
}

#[test]
fn truncated_onnx_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.png");
    png(&img, 4, 4, |_, _| [1, 1, 1]);
    let full = std::fs::read(identity_model(dir.path())).unwrap();
    // Cut at every length: each one is refused with the file named, none panics.
    let model = dir.path().join("cut.onnx");
    for len in [0, 1, full.len() / 3, full.len() / 2, full.len() - 1] {
        std::fs::write(&model, &full[..len]).unwrap();
        let err = infer_refused(&model, &[&img], &["cut.onnx"]);
        assert!(
            err.contains("not a valid ONNX model")
                || err.contains("no graph")
                || err.contains("pipe export"),
            "cut at {len}: {err}"
        );
    }
    // ONNX Runtime refuses it the same way.
    std::fs::write(&model, &full[..full.len() / 2]).unwrap();
    let err = fails(&[
        OsStr::new("infer"),
        "--backend".as_ref(),
        "ort".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        img.as_os_str(),
    ]);
    assert!(err.contains("cut.onnx"), "{err}");
}

#[test]
fn model_without_class_names_falls_back_to_indices_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("anonymous.onnx");
    let s4 = Some(S as i64);
    std::fs::write(
        &model,
        flatten_model("images", &[None, s4, s4, Some(3)], false),
    )
    .unwrap();
    let img = dir.path().join("a.png");
    png(&img, 4, 4, |x, _| [0, 0, if x == 3 { 200 } else { 0 }]);
    let (stdout, stderr) = ok(&[
        OsStr::new("infer"),
        "--model".as_ref(),
        model.as_os_str(),
        img.as_os_str(),
    ]);
    assert!(
        stderr.contains("warning")
            && stderr.contains("anonymous.onnx")
            && stderr.contains("class indices"),
        "{stderr}"
    );
    // The first maximum is pixel (3,0)'s blue value: output 3*3+2 = 11.
    assert!(stdout.ends_with("a.png\t11\t200.0000\n"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------------
// Training faults
// ---------------------------------------------------------------------------------------------------

#[test]
fn training_interrupted_by_sigint_resumes_to_the_uninterrupted_result() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bin");
    write_binary_release(&data, 10);
    let runs = tmp.path().join("runs");
    let cache = tmp.path().join("cache");
    let args = |name: &str| {
        let mut a = with(
            train_args(&data, &runs, &w),
            &[
                "--train-limit",
                "50",
                "--test-limit",
                "10",
                "--epochs",
                "8",
                "--batch-size",
                "5",
                "--name",
                name,
            ],
        );
        a.retain(|x| x != "--no-cache");
        a.extend(["--cache-dir".into(), cache.clone().into_os_string()]);
        a
    };
    ok(&args("full"));
    // Ctrl-C (SIGINT) once the first epoch checkpoint is on disk.
    let killed = args("killed");
    let mut child = pipe_command(&killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = runs.join("killed/checkpoint.safetensors");
    let t0 = Instant::now();
    while !checkpoint.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before its first checkpoint was seen"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: sending a signal to our own child process.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let status = child.wait().unwrap();
    assert!(!status.success(), "interrupted: {status}");
    assert!(
        !runs.join("killed/head.safetensors").exists(),
        "the run was interrupted before it finished"
    );
    let (_, err) = ok(&[
        "train",
        "--resume",
        "--name",
        "killed",
        "--runs-dir",
        s(&runs),
        "--cache-dir",
        s(&cache),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("continuing after epoch"), "{err}");
    let read = |run: &str, f: &str| std::fs::read(runs.join(run).join(f)).unwrap();
    assert_eq!(read("full", "history.json"), read("killed", "history.json"));
    assert_eq!(
        read("full", "head.safetensors"),
        read("killed", "head.safetensors")
    );
    assert!(tmp_files(&runs.join("killed")).is_empty());
}

#[test]
fn export_killed_midway_leaves_no_file_and_unwritable_outputs_are_refused() {
    let w = weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bin");
    write_binary_release(&data, 10);
    let runs = tmp.path().join("runs");
    ok(&with(
        train_args(&data, &runs, &w),
        &["--train-limit", "20", "--test-limit", "10"],
    ));
    // A parent that is a regular file: refused at once, naming it.
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let err = fails(&[
        "export",
        &format!("{}/model.onnx", s(&file)),
        "--run",
        "r",
        "--runs-dir",
        s(&runs),
    ]);
    assert!(
        err.contains("plain-file") && err.contains("not a folder"),
        "{err}"
    );
    let err = fails(&with(
        train_args(&data, &file.join("runs"), &w),
        &["--name", "other"],
    ));
    assert!(
        err.contains("plain-file") && err.contains("not a folder"),
        "{err}"
    );

    // A run whose head file or config.json was cut short (copied half-way).
    let export_refused = |run: &str, what: &[&str]| {
        let out = tmp.path().join("half.onnx");
        let err = fails(&["export", s(&out), "--run", run, "--runs-dir", s(&runs)]);
        for w in what {
            assert!(err.contains(w), "lacks {w:?}: {err}");
        }
        assert!(!out.exists());
        assert!(tmp_files(tmp.path()).is_empty());
    };
    for (run, file) in [
        ("cut-head", "head.safetensors"),
        ("cut-config", "config.json"),
    ] {
        let dir = runs.join(run);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(runs.join("r")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        let bytes = std::fs::read(dir.join(file)).unwrap();
        std::fs::write(dir.join(file), &bytes[..bytes.len() / 2]).unwrap();
    }
    export_refused(
        "cut-head",
        &["cut-head/head.safetensors", "not a valid safetensors file"],
    );
    export_refused("cut-config", &["cut-config/config.json", "invalid JSON"]);

    // SIGKILL while the model is being written or verified: nothing at the target path.
    let out_dir = tmp.path().join("onnx");
    std::fs::create_dir_all(&out_dir).unwrap();
    let target = out_dir.join("model.onnx");
    let args = ["export", s(&target), "--run", "r", "--runs-dir", s(&runs)];
    let mut child = pipe_command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while tmp_files(&out_dir).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "export ended before its temporary file was seen"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no temporary file appeared"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !target.exists(),
        "a killed export leaves no model at the target path"
    );
    // The next export succeeds and clears the dead process's temporary file.
    let (stdout, _) = ok(&args);
    assert!(stdout.contains("exported run r"), "{stdout}");
    assert!(target.is_file());
    assert_eq!(tmp_files(&out_dir), Vec::<String>::new(), "no *.tmp left");
}

#[test]
fn unwritable_infer_output_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let img = dir.path().join("a.png");
    png(&img, 4, 4, |_, _| [1, 1, 1]);
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let out = file.join("preds.tsv");
    let err = fails(&[
        OsStr::new("infer"),
        "-o".as_ref(),
        out.as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
        img.as_os_str(),
    ]);
    assert!(
        err.contains("plain-file") && err.contains("not a folder"),
        "{err}"
    );
    let missing = dir.path().join("no/such/folder/preds.tsv");
    let err = fails(&[
        OsStr::new("infer"),
        "-o".as_ref(),
        missing.as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
        img.as_os_str(),
    ]);
    assert!(
        err.contains("no/such/folder") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn disk_full_while_writing_leaves_no_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for i in 0..64u8 {
        png(&imgs.join(format!("{i:03}.png")), 4, 4, |x, y| {
            [i, x as u8, y as u8]
        });
    }
    let out_dir = dir.path().join("small");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("out.txt");
    // About 30 kB of output (top 48 per image) into 16 kB of space.
    let pipe_args: Vec<&OsStr> = vec![
        "infer".as_ref(),
        "--top-k".as_ref(),
        "48".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
        imgs.as_os_str(),
    ];
    // A real full disk: a 16 kB tmpfs in a private mount namespace (needs root or user namespaces).
    let script = "d=\"$1\"; shift; mount -t tmpfs -o size=16k pipe-test \"$d\" || exit 99; \
                  \"$@\"; rc=$?; echo \"left: [$(ls -A \"$d\")]\"; exit $rc";
    let tmpfs = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(&out_dir)
        .arg(env!("CARGO_BIN_EXE_pipe"))
        .args(&pipe_args)
        .output();
    let (output, full_message): (Output, &str) = match tmpfs {
        Ok(o) if o.status.code() != Some(99) => (o, "No space left on device"),
        _ => {
            // No mount permission: a file-size limit makes the same write fail (EFBIG).
            eprintln!("tmpfs not available; simulating a full disk with RLIMIT_FSIZE");
            let mut cmd = pipe_command(&pipe_args);
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: 16 << 10,
                        rlim_max: 16 << 10,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            (cmd.output().unwrap(), "File too large")
        }
    };
    log(&pipe_args, &output);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("out.txt") && err.contains(full_message),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    if full_message.starts_with("No space") {
        assert!(
            stdout.contains("left: []"),
            "nothing left on the full disk: {stdout}"
        );
    }
    assert!(!out.exists());
    assert!(tmp_files(&out_dir).is_empty());
}

// ---------------------------------------------------------------------------------------------------
// Runtime
// ---------------------------------------------------------------------------------------------------

#[test]
fn missing_onnxruntime_library_says_where_it_looked_and_how_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let img = dir.path().join("a.png");
    png(&img, 4, 4, |_, _| [1, 1, 1]);
    let err = fails(&[
        OsStr::new("infer"),
        "--backend".as_ref(),
        "ort".as_ref(),
        "--ort-lib".as_ref(),
        "/opt/none/libonnxruntime.so".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        img.as_os_str(),
    ]);
    for want in [
        "/opt/none/libonnxruntime.so (not found)",
        "--ort-lib",
        "ORT_DYLIB_PATH",
        "make setup",
    ] {
        assert!(err.contains(want), "lacks {want:?}: {err}");
    }
    // ORT_DYLIB_PATH naming a file that is not a shared library.
    let bogus = dir.path().join("libonnxruntime.so");
    std::fs::write(&bogus, "not a library").unwrap();
    let args = [
        OsStr::new("infer"),
        "--backend".as_ref(),
        "ort".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        img.as_os_str(),
    ];
    let out = pipe_command(&args)
        .env("ORT_DYLIB_PATH", &bogus)
        .output()
        .unwrap();
    log(&args, &out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(s(&bogus)) && err.contains("--ort-lib") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    let cuda = Command::new("nvidia-smi")
        .output()
        .is_ok_and(|o| o.status.success());
    let dir = tempfile::tempdir().unwrap();
    let model = identity_model(dir.path());
    let img = dir.path().join("a.png");
    png(&img, 4, 4, |_, _| [1, 1, 1]);
    let infer = |backend: &str| {
        pipe(&[
            OsStr::new("infer"),
            "--backend".as_ref(),
            backend.as_ref(),
            "--device".as_ref(),
            "cuda".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            img.as_os_str(),
        ])
    };
    let out = infer("tract");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tract backend runs on the CPU only"));
    if cuda {
        eprintln!("SKIPPED the no-GPU checks: nvidia-smi sees a GPU");
        return;
    }
    let out = infer("ort");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CUDA execution provider is not available") && err.contains("--device cpu"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bin");
    write_binary_release(&data, 10);
    let runs = tmp.path().join("runs");
    let mut args = train_args(&data, &runs, &weights());
    let i = args.iter().position(|a| a == "cpu").unwrap();
    args[i] = "cuda".into();
    let err = fails(&args);
    assert!(
        err.contains("--device cuda")
            && err.contains("no CUDA device")
            && err.contains("--device auto"),
        "{err}"
    );
    no_run(&runs);
}
