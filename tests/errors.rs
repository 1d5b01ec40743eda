//! Bad input and faults: every error case names the file, says what is wrong (and what to do), exits
//! with code 1 and leaves no partial output; unusual but valid images take the right decoding path.
//! `tests/README.md` maps each case of the list to its test here.
//!
//! Images go through `pipe infer` with a tiny generated ONNX model whose output is its input
//! (`images` [N,4,4,3] → Flatten → [N,48]): `--format json` then shows exactly the pixels pipe decoded,
//! converted and resized. Training cases use a generated CIFAR-10 binary release or generated image
//! folders (and the real VGG16 weights of `make setup` where training has to start).
#![cfg(all(feature = "train", feature = "ort"))]

mod common;

use common::{
    assert_contains, image_folders, nvidia_gpu, png, s, tmp_files, weights, Pipe, Workdir,
};
use prost::Message;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
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

/// A test's temporary folder with the identity model (see [`identity_model`]) in it.
fn identity() -> (Workdir, PathBuf) {
    let dir = Workdir::new();
    let model = identity_model(dir.path());
    (dir, model)
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
    let doc = Pipe::infer(model).paths(inputs).infer_json();
    let pixels = doc
        .predictions
        .into_iter()
        .map(|r| (r.path, r.probabilities))
        .collect();
    (pixels, doc.stderr)
}

/// `pipe infer -o DIR/out.json` on `inputs` must exit with 1, name the file, and leave no output and
/// no temporary file; returns stderr.
fn infer_refused(model: &Path, inputs: &[&Path], must_contain: &[&str]) -> String {
    let out_dir = Workdir::new();
    let out = out_dir.join("out.json");
    let err = Pipe::infer(model)
        .format("json")
        .arg("-o", &out)
        .paths(inputs)
        .fails();
    for m in must_contain {
        assert!(err.contains(m), "stderr lacks {m:?}: {err}");
    }
    assert!(!out.exists(), "no output file on error");
    assert_eq!(
        std::fs::read_dir(out_dir.path()).unwrap().count(),
        0,
        "nothing left in the output folder"
    );
    err
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

/// Files written in this order into a fresh folder with the identity model and named on the command
/// line of `pipe infer --format json -o …`, after a good image: exit code 1 with the bad file named on
/// stderr (see [`must_contain`]), but only once the output was written: the good image classified, and
/// each bad file an error record.
fn named_files_fail_after_the_others(files: &[(&str, &[u8])], must_contain: &[&str]) {
    let (dir, model) = identity();
    let good = dir.png("good.png", 4, 4, |_, _| [1, 2, 3]);
    let mut paths = vec![good];
    paths.extend(files.iter().map(|(n, b)| dir.write(n, b)));
    let out = dir.join("out.json");
    let err = Pipe::infer(&model)
        .format("json")
        .arg("-o", &out)
        .paths(&paths)
        .fails();
    assert_contains(&err, must_contain);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let records = doc["predictions"].as_array().unwrap();
    assert_eq!(records.len(), paths.len(), "{doc}");
    assert_eq!(records[0]["probabilities"][2], 3.0, "the good image: {doc}");
    for r in &records[1..] {
        assert!(r["error"].is_string(), "an error record: {r}");
    }
}

/// Saves `img` as `name` (format from the extension) in `dir`; returns the path.
fn saved(dir: &Workdir, name: &str, img: impl Into<image::DynamicImage>) -> PathBuf {
    let p = dir.join(name);
    img.into().save(&p).unwrap();
    p
}

/// A JPEG cut in the middle.
fn truncated_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 99])
    });
    let bytes = jpeg_bytes(&img);
    bytes[..bytes.len() / 2].to_vec()
}

/// An AVIF header (ISO-BMFF `ftyp` box, brand avif): recognised, but not a format pipe decodes.
fn avif_header() -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 0x1c];
    bytes.extend(b"ftypavif\0\0\0\0avifmif1miaf");
    bytes.resize(64, 0);
    bytes
}

#[test]
fn zero_byte_image_is_refused_by_name() {
    let files: [(&str, &[u8]); 1] = [("empty.jpg", b"")];
    named_files_fail_after_the_others(&files, &["empty.jpg", "empty file (0 bytes)"]);
}

#[test]
fn truncated_jpeg_is_refused_by_name() {
    let cut = truncated_jpeg();
    named_files_fail_after_the_others(&[("cut.jpg", &cut)], &["cut.jpg", "truncated"]);
}

#[test]
fn text_file_named_jpg_is_refused_by_name() {
    let notes = b"shopping list: milk, eggs\n";
    let want = ["notes.jpg", "not an image", "JPEG, PNG"];
    named_files_fail_after_the_others(&[("notes.jpg", notes)], &want);
}

#[test]
fn unsupported_format_is_refused_by_name() {
    let want = ["photo.avif", "unsupported image format", "JPEG, PNG"];
    named_files_fail_after_the_others(&[("photo.avif", &avif_header())], &want);
}

/// Two bad files named on the command line: both named in the one error.
#[test]
fn two_named_bad_files_are_both_reported() {
    let files: [(&str, &[u8]); 2] = [("a.jpg", b""), ("b.jpg", b"text")];
    let want = ["2 files named on the command line", "a.jpg", "b.jpg"];
    named_files_fail_after_the_others(&files, &want);
}

#[test]
fn grayscale_png_is_replicated_to_rgb() {
    let (dir, model) = identity();
    let gray = image::GrayImage::from_pixel(4, 4, image::Luma([77]));
    let gray_alpha = image::GrayAlphaImage::from_pixel(4, 4, image::LumaA([200, 10]));
    let files = [
        saved(&dir, "gray.png", gray),
        saved(&dir, "gray_alpha.png", gray_alpha),
    ];
    let (preds, _) = infer_pixels(&model, &files);
    assert_eq!(preds[0].1, vec![77.0; 48]);
    assert_eq!(preds[1].1, vec![200.0; 48], "alpha dropped, not blended");
}

#[test]
fn rgba_png_drops_alpha() {
    let (dir, model) = identity();
    let rgba = image::RgbaImage::from_pixel(4, 4, image::Rgba([10, 20, 30, 0]));
    let (preds, _) = infer_pixels(&model, &[saved(&dir, "rgba.png", rgba)]);
    // As Keras' load_img (PIL convert("RGB")): the colour stays, transparency is ignored.
    assert_eq!(preds[0].1, repeat([10.0, 20.0, 30.0], 16));
}

#[test]
fn sixteen_bit_png_is_scaled_to_eight_bits() {
    let (dir, model) = identity();
    let deep = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
        4,
        4,
        image::Rgb([65535, 32896, 0]),
    );
    let (preds, _) = infer_pixels(&model, &[saved(&dir, "deep.png", deep)]);
    // 65535 → 255, 32896 = 128 * 257 → 128, 0 → 0.
    assert_eq!(preds[0].1, repeat([255.0, 128.0, 0.0], 16));
}

#[test]
fn cmyk_jpeg_is_converted_to_rgb() {
    let (_dir, model) = identity();
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
    let (dir, model) = identity();
    let p = dir.png("dot.png", 1, 1, |_, _| [200, 100, 50]);
    let big = dir.join("wide.png");
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

/// A valid PNG header announcing 20000x20000 RGB (1.2 GB decoded), then a few bytes of data.
fn bomb_png() -> Vec<u8> {
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
    bytes
}

#[test]
fn decompression_bomb_header_is_refused_without_allocating() {
    let (dir, model) = identity();
    let bomb = dir.write("bomb.png", bomb_png());
    // The process may not allocate more than 1 GB of data: were the image allocated, pipe would abort
    // instead of exiting with a message.
    let out_dir = Workdir::new();
    let out_file = out_dir.join("out.json");
    let infer = Pipe::infer(&model)
        .format("json")
        .arg("-o", &out_file)
        .path(&bomb);
    let out = limited(infer.command(), libc::RLIMIT_DATA, 1 << 30)
        .output()
        .unwrap();
    infer.log(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_contains(&err, &["bomb.png", "20000x20000", "limit"]);
    // The output holds its error record.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(doc["predictions"][0]["error"], "oversized", "{doc}");
}

/// `cmd` with its `resource` limit (`libc::RLIMIT_*`) set to `bytes` in the child; SIGXFSZ is ignored
/// there, so that a write over `RLIMIT_FSIZE` fails with EFBIG instead of killing the process.
fn limited(mut cmd: Command, resource: libc::__rlimit_resource_t, bytes: u64) -> Command {
    // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
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
    let (dir, model) = identity();
    // Stored 16x8: left half red, right half blue. Orientation 6 = rotate 90° clockwise to display:
    // the displayed image is 8x16 with red on top and blue below.
    let img = image::RgbImage::from_fn(16, 8, |x, _| {
        image::Rgb(if x < 8 { [255, 0, 0] } else { [0, 0, 255] })
    });
    let plain = jpeg_bytes(&img);
    let rotated = dir.write("rotated.jpg", with_exif_orientation(&plain, 6));
    let upright = dir.write("upright.jpg", with_exif_orientation(&plain, 1));
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
    let (dir, model) = identity();
    let folder = dir.dir("my photos");
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
    let text = Pipe::infer(&model)
        .path(&latin1)
        .path(folder.join("a b.png"))
        .ok()
        .stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("caf\u{fffd}.png\tc2\t255.0000"), "{text}");
    assert!(lines[1].contains("a b.png\tc0\t255.0000"), "{text}");
    let csv = Pipe::infer(&model).format("csv").path(&folder).ok().stdout;
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.contains("a b.png,c0,255"), "{csv}");
}

#[test]
fn symlink_loop_is_reported_not_followed_forever() {
    let (dir, model) = identity();
    let folder = dir.join("imgs");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    png(&folder.join("sub/one.png"), 4, 4, |_, _| [9, 9, 9]);
    std::os::unix::fs::symlink("..", folder.join("sub/back")).unwrap();
    let infer = Pipe::infer(&model).path(&folder);
    let child = infer
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let watchdog = common::Watchdog::new(child.id(), Duration::from_secs(120));
    let out = child.wait_with_output().unwrap();
    assert!(
        !watchdog.finish(),
        "pipe infer did not finish on a folder with a symlink loop within 120 s"
    );
    infer.log(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_contains(&err, &["warning", "symlink loop", "back"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "the one image, once: {stdout}");
    assert!(
        stdout.starts_with(&format!("{}/sub/one.png\t", folder.display())),
        "{stdout}"
    );
}

#[test]
fn empty_folder_is_a_clear_error() {
    let (dir, model) = identity();
    let empty = dir.dir("nothing here");
    infer_refused(&model, &[&empty], &["no image files", "nothing here"]);
}

#[test]
fn non_image_files_are_skipped_with_a_counted_warning() {
    let (dir, model) = identity();
    let folder = dir.dir("mixed");
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
// Files inside folders: skipped, named, counted, listed
// ---------------------------------------------------------------------------------------------------

/// The kinds of junk a folder of downloaded photos holds: (file name, bytes, skip reason).
fn junk() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        ("empty.jpg", Vec::new(), "empty"),
        ("cut.jpg", truncated_jpeg(), "truncated"),
        ("notes.jpg", b"shopping list\n".to_vec(), "not_an_image"),
        ("photo.jpg", avif_header(), "unsupported_format"),
        ("bomb.png", bomb_png(), "oversized"),
    ]
}

/// `folder/cat/` with the good image `good.png`, every [`junk`] file and OS droppings (ignored).
fn junk_folder(dir: &Workdir) -> PathBuf {
    let cat = dir.dir("photos/cat");
    png(&cat.join("good.png"), 4, 4, |_, _| [9, 8, 7]);
    for (name, bytes, _) in junk() {
        std::fs::write(cat.join(name), bytes).unwrap();
    }
    std::fs::write(cat.join(".DS_Store"), "junk").unwrap();
    std::fs::create_dir_all(dir.join("photos/__MACOSX/cat")).unwrap();
    std::fs::write(dir.join("photos/__MACOSX/cat/._good.png"), "junk").unwrap();
    dir.join("photos")
}

#[test]
fn junk_in_a_folder_is_skipped_named_once_counted_and_listed() {
    let (dir, model) = identity();
    let folder = junk_folder(&dir);
    let doc = Pipe::infer(&model).path(&folder).infer_json_exits(3);
    let err = &doc.stderr;
    assert_contains(
        err,
        &[
            "skipped 5 image files that could not be decoded",
            "1 empty",
            "1 truncated",
        ],
    );
    assert_eq!(
        doc.predictions.len(),
        6,
        "the good image and the 5 bad files"
    );
    for (name, _, reason) in junk() {
        assert_eq!(err.matches(name).count(), 1, "{name} named once: {err}");
        let r = doc.predictions.iter().find(|r| r.path.ends_with(name));
        let r = r.unwrap_or_else(|| panic!("no record for {name}"));
        assert_eq!(r.error.as_deref(), Some(reason), "{name}");
        assert!(r.message.as_ref().is_some_and(|m| !m.is_empty()));
    }
    let good: Vec<_> = doc
        .predictions
        .iter()
        .filter(|r| r.error.is_none())
        .collect();
    assert_eq!(good.len(), 1);
    assert_eq!(good[0].probabilities[..3], [9.0, 8.0, 7.0]);
    assert!(
        !err.contains("DS_Store") && !err.contains("MACOSX"),
        "{err}"
    );
    // CSV: the reason in the error column; text: one line, the classified image.
    let csv = Pipe::infer(&model)
        .format("csv")
        .path(&folder)
        .exits(3)
        .stdout;
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].starts_with("path,label,") && rows[0].ends_with(",error"));
    assert_eq!(rows.len(), 7, "{csv}");
    for (name, _, reason) in junk() {
        let row = rows.iter().find(|r| r.contains(name)).unwrap();
        assert!(row.ends_with(&format!(",,{reason}")), "{row}");
    }
    let text = Pipe::infer(&model).path(&folder).exits(3).stdout;
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn strict_stops_at_the_first_bad_file_in_a_folder() {
    let (dir, model) = identity();
    let folder = junk_folder(&dir);
    let out = dir.join("out.json");
    let err = Pipe::infer(&model)
        .format("json")
        .flag("--strict")
        .arg("-o", &out)
        .path(&folder)
        .fails();
    let named: Vec<&str> = junk()
        .iter()
        .map(|(n, _, _)| *n)
        .filter(|n| err.contains(n))
        .collect();
    assert_eq!(named.len(), 1, "one file named: {err}");
    assert!(!out.exists(), "no output with --strict");
}

/// 1,000 good images and a few bad ones in one folder: every good image classified, the bad ones
/// reported, whatever the batch boundaries.
#[test]
fn a_thousand_good_images_and_a_few_bad_ones() {
    let (dir, model) = identity();
    let folder = dir.dir("many");
    for i in 0..1000u32 {
        png(&folder.join(format!("{i:04}.png")), 4, 4, |_, _| {
            [(i % 256) as u8, (i / 256) as u8, 1]
        });
    }
    for (name, bytes, _) in junk().into_iter().take(3) {
        std::fs::write(folder.join(name), bytes).unwrap();
    }
    let out = dir.join("out.csv");
    let run = Pipe::infer(&model)
        .backend("tract")
        .format("csv")
        .arg("--batch-size", "64")
        .arg("-o", &out)
        .path(&folder)
        .exits(3);
    assert_contains(&run.stderr, &["skipped 3 image files", "1000 images"]);
    let csv = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 1003);
    let bad = rows.iter().filter(|r| !r.ends_with(',')).count();
    assert_eq!(bad, 3, "{csv}");
    for i in [0u32, 63, 64, 500, 999] {
        let name = format!("{i:04}.png,");
        let row = rows.iter().find(|r| r.contains(&name)).unwrap();
        assert!(row.ends_with(','), "classified, no error: {row}");
    }
    // Each record holds its own file's pixels (the identity model outputs them): no result moves to
    // a neighbour across a batch boundary or past a skipped file.
    let doc = Pipe::infer(&model)
        .backend("tract")
        .arg("--batch-size", "64")
        .path(&folder)
        .infer_json_exits(3);
    let mut seen = 0;
    for r in &doc.predictions {
        let name = Path::new(&r.path).file_name().unwrap().to_string_lossy();
        let Some(i) = name
            .strip_suffix(".png")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            assert!(r.error.is_some(), "{} classified", r.path);
            continue;
        };
        let want = [(i % 256) as f32, (i / 256) as f32, 1.0];
        assert_eq!(r.probabilities.len(), 48, "{}", r.path);
        for px in r.probabilities.chunks(3) {
            assert_eq!(px, want, "{}: another image's pixels", r.path);
        }
        seen += 1;
    }
    assert_eq!(seen, 1000);
}

/// The identity model with `props` added to its metadata, as `name` in `dir`.
fn identity_model_with(dir: &Path, name: &str, props: &[(&str, &str)]) -> PathBuf {
    let mut m =
        pb::ModelProto::decode(std::fs::read(identity_model(dir)).unwrap().as_slice()).unwrap();
    for (k, v) in props {
        m.metadata_props.push(pb::StringStringEntryProto {
            key: (*k).into(),
            value: (*v).into(),
        });
    }
    let p = dir.join(name);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

/// The resize policy in the model's metadata decides the pixels: a 12x4 image in red, green and blue
/// thirds is the green centre square with `resize: crop`, and squashed (red left, blue right) without
/// the key, as every model exported before it; `pipe inspect` shows it; an unknown policy is refused.
#[test]
fn the_models_resize_policy_decides_the_pixels() {
    let (dir, squash) = identity();
    let crop = identity_model_with(dir.path(), "crop.onnx", &[("resize", "crop")]);
    let img = dir.png("thirds.png", 12, 4, |x, _| match x / 4 {
        0 => [255, 0, 0],
        1 => [0, 255, 0],
        _ => [0, 0, 255],
    });
    let (cropped, _) = infer_pixels(&crop, &[&img]);
    assert_eq!(cropped[0].1, repeat([0.0, 255.0, 0.0], S * S));
    let (squashed, _) = infer_pixels(&squash, &[&img]);
    assert_eq!(&squashed[0].1[..3], &[255.0, 0.0, 0.0]);
    assert_eq!(&squashed[0].1[9..12], &[0.0, 0.0, 255.0]);
    let inspect = Pipe::inspect(&crop).ok().stdout;
    assert_contains(
        &inspect,
        &["resize:     crop (shorter side to 4", "bilinear"],
    );
    let squash_inspect = Pipe::inspect(&squash).ok().stdout;
    assert_contains(&squash_inspect, &["resize:     squash"]);
    let odd = identity_model_with(dir.path(), "odd.onnx", &[("resize", "stretch")]);
    let err = Pipe::infer(&odd).path(&img).fails();
    assert_contains(&err, &["odd.onnx", "metadata resize", "squash or crop"]);
}

// ---------------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------------

/// `pipe train` of run `r` on all of `data` into `runs`, one epoch, no feature cache.
fn train(data: &Path, runs: &Path, weights: &Path) -> Pipe {
    Pipe::train()
        .data(data)
        .weights(weights)
        .runs(runs)
        .limits(0, 0)
        .epochs(1)
        .batch(4)
        .no_cache()
        .name("r")
}

/// Asserts that a refused training left no run behind.
fn no_run(runs: &Path) {
    assert!(!runs.join("r").exists(), "no run folder on error");
    assert!(!runs.join("latest").exists());
}

/// Asserts that `pipe train` on `data` fails naming each of `what`, leaving no run.
fn training_refused(data: &Path, weights: &Path, what: &[&str]) {
    let runs = data.with_file_name("runs");
    let err = train(data, &runs, weights).fails();
    for w in what {
        assert!(err.contains(w), "lacks {w:?}: {err}");
    }
    no_run(&runs);
}

#[test]
fn training_folder_with_one_class_or_none_is_refused() {
    let w = Workdir::new();
    let one = w.join("one");
    image_folders(&one, "train", &["cat"], 2);
    image_folders(&one, "test", &["cat"], 2);
    training_refused(
        &one,
        &weights(),
        &["one/train", "at least 2 classes, found 1"],
    );
    let none = w.join("none");
    std::fs::create_dir_all(none.join("train")).unwrap();
    std::fs::create_dir_all(none.join("test")).unwrap();
    training_refused(&none, &weights(), &["none/train", "no class sub-folders"]);
    training_refused(&w.join("missing"), &weights(), &["missing", "make setup"]);
}

/// A test split may lack a class of the training split (tests/photos.rs trains one), but a class
/// found only in the test split is refused by name.
#[test]
fn a_class_only_in_the_test_split_is_refused_by_name() {
    let w = Workdir::new();
    image_folders(&w.data, "train", &["cat", "dog"], 2);
    image_folders(&w.data, "test", &["bird", "cat"], 2);
    training_refused(
        &w.data,
        &weights(),
        &[
            "test/bird",
            r#"class "bird" is not a class of the training split"#,
            "(cat, dog)",
        ],
    );
}

/// A generated binary release of 10 records per file, with `edit` applied to the bytes of `file`.
fn edited_release(w: &Workdir, file: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let data = w.join("bin");
    common::write_binary_release(&data, 10);
    let mut bytes = std::fs::read(data.join(file)).unwrap();
    edit(&mut bytes);
    std::fs::write(data.join(file), &bytes).unwrap();
    data
}

#[test]
fn truncated_cifar_binary_is_refused_by_name() {
    let w = Workdir::new();
    let data = edited_release(&w, "test_batch.bin", |b| b.truncate(b.len() - 1000));
    training_refused(
        &data,
        &weights(),
        &["test_batch.bin", "not a whole number", "truncated"],
    );
}

#[test]
fn cifar_label_byte_out_of_range_is_refused_by_name() {
    let w = Workdir::new();
    // The label byte of record 3.
    let data = edited_release(&w, "data_batch_2.bin", |b| b[3 * 3073] = 10);
    training_refused(
        &data,
        &weights(),
        &["data_batch_2.bin", "record 3 has label 10"],
    );
}

#[test]
fn train_limit_larger_than_the_data_is_refused() {
    let w = Workdir::binary_release(10);
    let err = train(&w.data, &w.runs, &weights())
        .arg("--train-limit", "5000")
        .fails();
    assert_contains(
        &err,
        &["--train-limit 5000 exceeds the 50 images", "use 0 for all"],
    );
    no_run(&w.runs);
}

#[test]
fn odd_folders_train_with_warnings_and_auto_device() {
    // Image folders with a space in a class name, a non-UTF-8 file name and non-image files: training
    // works, skipped files are counted, and `--device auto` falls back to the CPU without CUDA.
    let w = Workdir::new();
    let data = &w.data;
    image_folders(data, "train", &["big cat", "dog"], 3);
    image_folders(data, "test", &["big cat", "dog"], 2);
    png(
        &data
            .join("test/dog")
            .join(OsStr::from_bytes(b"\xffodd.png")),
        32,
        32,
        |_, _| [1, 2, 3],
    );
    std::fs::write(data.join("train/dog/notes.txt"), "x").unwrap();
    std::fs::write(data.join("test/big cat/notes.md"), "x").unwrap();
    // Operating-system droppings are neither samples nor skipped files.
    std::fs::write(data.join("test/big cat/Thumbs.db"), "x").unwrap();
    std::fs::write(data.join("train/dog/.DS_Store"), "x").unwrap();
    let err = train(data, &w.runs, &weights())
        .arg("--device", "auto")
        .ok()
        .stderr;
    assert_contains(
        &err,
        &[
            "data/train: skipped 1 file that is not an image",
            "data/test: skipped 1 file that is not an image",
        ],
    );
    assert!(
        !err.contains("Thumbs.db") && !err.contains(".DS_Store"),
        "{err}"
    );
    let run = w.run("r");
    let config = run.config();
    assert_eq!(config["classes"], serde_json::json!(["big cat", "dog"]));
    assert_eq!(config["train_images"], 6);
    assert_eq!(config["test_images"], 5);
    // `--device auto`: CUDA where nvidia-smi sees a GPU (the GPU build), else the CPU.
    let want = if nvidia_gpu() { "cuda" } else { "cpu" };
    assert_eq!(config["device"], want, "--device auto");
    let files: Vec<String> = run
        .predictions()
        .items
        .into_iter()
        .map(|i| i.file)
        .collect();
    assert!(
        files.iter().any(|f| f == "dog/\u{fffd}odd.png"),
        "{files:?}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Weights and models
// ---------------------------------------------------------------------------------------------------

#[test]
fn missing_weights_file_says_make_setup() {
    let w = Workdir::binary_release(10);
    let missing = w.join("vgg16_imagenet.safetensors");
    training_refused(&w.data, &missing, &[s(&missing), "not found", "make setup"]);
}

#[test]
fn weights_with_a_wrong_shape_or_format_are_refused() {
    use pipe::weights::{save_safetensors, NamedTensor};
    let w = Workdir::binary_release(10);
    let bad = w.join("bad.safetensors");
    let tensor = NamedTensor {
        name: "base.block1_conv1.weight".into(),
        shape: vec![64, 3, 3, 1],
        data: vec![0.0; 64 * 9],
    };
    save_safetensors(&bad, &[tensor], Default::default()).unwrap();
    training_refused(
        &w.data,
        &bad,
        &[
            "bad.safetensors",
            "\"base.block1_conv1.weight\" has shape [64, 3, 3, 1], expected [64, 3, 3, 3]",
        ],
    );
    // A half-copied weights file.
    let real = std::fs::read(weights()).unwrap();
    let half = w.join("half.safetensors");
    std::fs::write(&half, &real[..real.len() / 2]).unwrap();
    training_refused(
        &w.data,
        &half,
        &["half.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn export_of_a_missing_or_half_written_run_is_refused() {
    let w = Workdir::new();
    let out = w.join("onnx/model.onnx");
    let export = |run: &str| {
        let err = w.export(run, &out).fails();
        assert!(!out.exists(), "no model written");
        assert!(tmp_files(&w.join("onnx")).is_empty());
        err
    };
    let err = export("latest");
    assert_contains(&err, &["no training run yet", "pipe train"]);
    let err = export("nope");
    assert_contains(&err, &["runs/nope", "no such run"]);
    // config.json written, killed before the head: unfinished, with the resume command.
    let run = w.runs.join("half");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.json"), b"{}").unwrap();
    let err = export("half");
    assert_contains(
        &err,
        &["unfinished run", "head.safetensors is missing", "--resume"],
    );
}

#[test]
fn foreign_onnx_models_are_refused_with_a_clear_message() {
    let dir = Workdir::new();
    let img = dir.png("a.png", 4, 4, |_, _| [1, 1, 1]);
    let s4 = Some(S as i64);
    // Each with the input line `pipe inspect` prints for it (a symbolic dimension by its name).
    let cases: [(&str, Vec<u8>, &str, &str); 3] = [
        (
            "x_input.onnx",
            flatten_model("x", &[None, s4, s4, Some(3)], true),
            "not a single `images` input",
            "input x: float32 [N, 4, 4, 3]\n",
        ),
        (
            "nchw.onnx",
            flatten_model("images", &[None, Some(3), Some(32), Some(32)], true),
            "expected [N,S,S,3]",
            "input images: float32 [N, 3, 32, 32]\n",
        ),
        (
            "no_shape.onnx",
            flatten_model("images", &[None, None, None, None], true),
            "expected [N,S,S,3]",
            "input images: float32 [N, N, N, N]\n",
        ),
    ];
    for (name, bytes, what, input) in cases {
        let model = dir.write(name, bytes);
        for backend in ["tract", "ort"] {
            let infer = Pipe::infer(&model).backend(backend).path(&img);
            let out = infer.output();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert_contains(&err, &[name, what, "pipe export"]);
            assert!(out.stdout.is_empty());
        }
        // inspect still shows what the file holds, then fails with the reason.
        let out = Pipe::inspect(&model).exits(1);
        assert_contains(&out.stderr, &[name, what]);
        assert_contains(
            &out.stdout,
            &[
                "producer: pipe tests",
                "opset: 17\n",
                input,
                "output probabilities: float32 [N, 48]\n",
                "graph: 1 nodes, 0 parameters\n",
            ],
        );
    }
    // A folder named as the model: said so, and a model repository is pointed to --model-repository.
    let folder = dir.join("models");
    std::fs::create_dir(&folder).unwrap();
    let repository = dir.join("repo");
    dir.write("repo/m/config.pbtxt", "name: \"m\"");
    for (model, hint) in [
        (&folder, "name the .onnx file"),
        (&repository, "`pipe serve --model-repository` serves"),
    ] {
        for backend in ["tract", "ort"] {
            let err = Pipe::infer(model).backend(backend).path(&img).fails();
            assert_contains(&err, &["is a folder, not an ONNX model file", hint]);
        }
        let err = Pipe::inspect(model).fails();
        assert_contains(&err, &["is a folder, not an ONNX model file", hint]);
    }
}

#[test]
fn class_folders_none_of_the_models_classes_get_a_warning() {
    let (dir, model) = identity();
    let warning = "none of them a class of";
    for name in [
        "ants/a.png",
        "bees/b.png",
        "c0/c.png",
        "new/d.png",
        "new/e.png",
    ] {
        dir.png(name, 4, 4, |_, _| [1, 1, 1]);
    }
    let infer = |paths: &[&str]| {
        let paths: Vec<_> = paths.iter().map(|p| dir.join(p)).collect();
        Pipe::infer(&model).paths(&paths).ok().stderr
    };
    let err = infer(&["ants", "bees"]);
    assert_contains(
        &err,
        &[
            "folders named ants, bees",
            warning,
            "(c0, c1, c2,",
            "--model",
        ],
    );
    // A folder of new photos, or class folders of which one is the model's: no warning.
    assert!(!infer(&["new"]).contains(warning));
    assert!(!infer(&["ants", "c0"]).contains(warning));
}

#[test]
fn truncated_onnx_is_refused_by_name() {
    let dir = Workdir::new();
    let img = dir.png("a.png", 4, 4, |_, _| [1, 1, 1]);
    let full = std::fs::read(identity_model(dir.path())).unwrap();
    // Cut at several lengths: each one is refused with the file named and the reason that fits
    // what is left (decided here by decoding the bytes with prost), none panics.
    let model = dir.join("cut.onnx");
    let mut reasons = std::collections::BTreeSet::new();
    for len in [0, 1, 2, full.len() / 3, full.len() / 2, full.len() - 1] {
        std::fs::write(&model, &full[..len]).unwrap();
        let want = match pb::ModelProto::decode(&full[..len]) {
            Err(_) => "not a valid ONNX model (protobuf decode failed",
            Ok(m) if m.graph.is_none() => "ONNX model has no graph",
            Ok(_) => "pipe expects a model exported by `pipe export`",
        };
        reasons.insert(want);
        let err = infer_refused(&model, &[&img], &["cut.onnx"]);
        assert!(err.contains(want), "cut at {len}: want {want:?}: {err}");
    }
    // The lengths reach more than one of the three paths.
    assert!(reasons.len() >= 2, "{reasons:?}");
    // ONNX Runtime refuses it the same way.
    std::fs::write(&model, &full[..full.len() / 2]).unwrap();
    let err = Pipe::infer(&model).backend("ort").path(&img).fails();
    assert!(err.contains("cut.onnx"), "{err}");
}

#[test]
fn model_without_class_names_falls_back_to_indices_with_a_warning() {
    let dir = Workdir::new();
    let model = dir.join("anonymous.onnx");
    let s4 = Some(S as i64);
    std::fs::write(
        &model,
        flatten_model("images", &[None, s4, s4, Some(3)], false),
    )
    .unwrap();
    let img = dir.png("a.png", 4, 4, |x, _| [0, 0, if x == 3 { 200 } else { 0 }]);
    let common::Out { stdout, stderr } = Pipe::infer(&model).path(&img).ok();
    assert_contains(&stderr, &["warning", "anonymous.onnx", "class indices"]);
    // The first maximum is pixel (3,0)'s blue value: output 3*3+2 = 11.
    assert!(stdout.ends_with("a.png\t11\t200.0000\n"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------------
// Training faults
// ---------------------------------------------------------------------------------------------------

#[test]
fn training_interrupted_by_sigint_resumes_to_the_uninterrupted_result() {
    let w = Workdir::binary_release(10);
    let train = |name: &str| w.train(name).limits(50, 10).epochs(6).batch(5);
    train("full").ok();
    // Ctrl-C (SIGINT) once the first epoch checkpoint is on disk. The test hook holds the run right
    // after writing it, so the signal lands there however slowly either process is scheduled.
    let mut child = train("killed").spawn_paused("after-checkpoint", Duration::from_secs(300));
    assert!(w.runs.join("killed/checkpoint.safetensors").is_file());
    // SAFETY: sending a signal to our own child process.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let status = child.wait().unwrap();
    assert!(!status.success(), "interrupted: {status}");
    let killed = w.run("killed");
    assert!(
        !killed.file("head.safetensors").exists(),
        "the run was interrupted before it finished"
    );
    let err = w.resume().name("killed").ok().stderr;
    assert!(err.contains("continuing after epoch"), "{err}");
    let full = w.run("full");
    for f in ["history.json", "head.safetensors"] {
        assert_eq!(full.bytes(f), killed.bytes(f), "{f}");
    }
    assert!(tmp_files(&killed.dir).is_empty());
}

#[test]
fn export_killed_midway_leaves_no_file_and_unwritable_outputs_are_refused() {
    let w = Workdir::binary_release(10);
    train(&w.data, &w.runs, &weights()).limits(20, 10).ok();
    // A parent that is a regular file: refused at once, naming it.
    let file = w.join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let err = w.export("r", file.join("model.onnx")).fails();
    assert_contains(&err, &["plain-file", "not a folder"]);
    let err = train(&w.data, &file.join("runs"), &weights())
        .name("other")
        .fails();
    assert_contains(&err, &["plain-file", "not a folder"]);

    // A run whose head file or config.json was cut short (copied half-way).
    let export_refused = |run: &str, what: &[&str]| {
        let out = w.join("half.onnx");
        let err = w.export(run, &out).fails();
        for m in what {
            assert!(err.contains(m), "lacks {m:?}: {err}");
        }
        assert!(!out.exists());
        assert!(tmp_files(w.path()).is_empty());
    };
    for (run, file) in [
        ("cut-head", "head.safetensors"),
        ("cut-config", "config.json"),
    ] {
        let dir = w.runs.join(run);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(w.runs.join("r")).unwrap() {
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
    let out_dir = w.join("onnx");
    std::fs::create_dir_all(&out_dir).unwrap();
    let target = out_dir.join("model.onnx");
    let export = w.export("r", &target);
    // The test hook holds the export with its complete temporary file written, just before the
    // rename: the kill lands there however slowly either process is scheduled.
    let mut child = export.spawn_paused("before-rename:model.onnx", Duration::from_secs(300));
    assert_eq!(tmp_files(&out_dir).len(), 1, "its complete temporary file");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !target.exists(),
        "a killed export leaves no model at the target path"
    );
    // The next export succeeds and clears the dead process's temporary file.
    let stdout = export.ok().stdout;
    assert!(stdout.contains("exported run r"), "{stdout}");
    assert!(target.is_file());
    assert_eq!(tmp_files(&out_dir), Vec::<String>::new(), "no *.tmp left");
}

#[test]
fn unwritable_infer_output_is_refused_before_any_work() {
    let (dir, model) = identity();
    let img = dir.png("a.png", 4, 4, |_, _| [1, 1, 1]);
    let file = dir.write("plain-file", "x");
    let infer_to = |out: &Path| Pipe::infer(&model).arg("-o", out).path(&img).fails();
    let err = infer_to(&file.join("preds.tsv"));
    assert_contains(&err, &["plain-file", "not a folder"]);
    let err = infer_to(&dir.join("no/such/folder/preds.tsv"));
    assert_contains(&err, &["no/such/folder", "does not exist"]);
    let err = infer_to(dir.path());
    assert_contains(&err, &["is a folder, not a file to write"]);
}

#[test]
fn disk_full_while_writing_leaves_no_partial_output() {
    let (dir, model) = identity();
    let imgs = dir.dir("imgs");
    for i in 0..64u8 {
        png(&imgs.join(format!("{i:03}.png")), 4, 4, |x, y| {
            [i, x as u8, y as u8]
        });
    }
    let out_dir = dir.dir("small");
    let out = out_dir.join("out.txt");
    // About 30 kB of output (top 48 per image) into 16 kB of space.
    let infer = Pipe::infer(&model)
        .arg("--top-k", "48")
        .arg("-o", &out)
        .path(&imgs);
    // A real full disk: a 16 kB tmpfs in a private mount namespace (needs root or user namespaces).
    let script = "d=\"$1\"; shift; mount -t tmpfs -o size=16k pipe-test \"$d\" || exit 99; \
                  \"$@\"; rc=$?; echo \"left: [$(ls -A \"$d\")]\"; exit $rc";
    let pipe_cmd = infer.command();
    let tmpfs = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(&out_dir)
        .arg(pipe_cmd.get_program())
        .args(pipe_cmd.get_args())
        .output();
    let (output, full_message): (Output, &str) = match tmpfs {
        Ok(o) if o.status.code() != Some(99) => (o, "No space left on device"),
        // As root (CI) the mount works: a failure to mount is then a broken test, not a skip.
        // SAFETY: geteuid has no preconditions.
        _ if unsafe { libc::geteuid() } == 0 => panic!("running as root, yet no tmpfs: {tmpfs:?}"),
        _ => {
            // No mount permission: a file-size limit makes the same write fail (EFBIG).
            eprintln!("tmpfs not available; simulating a full disk with RLIMIT_FSIZE");
            let mut cmd = limited(infer.command(), libc::RLIMIT_FSIZE, 16 << 10);
            (cmd.output().unwrap(), "File too large")
        }
    };
    infer.log(&output);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_contains(&err, &["out.txt", full_message]);
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
    let (dir, model) = identity();
    let img = dir.png("a.png", 4, 4, |_, _| [1, 1, 1]);
    let ort = Pipe::infer(&model).backend("ort").path(&img);
    let err = ort
        .clone()
        .arg("--ort-lib", "/opt/none/libonnxruntime.so")
        .fails();
    for want in [
        "/opt/none/libonnxruntime.so (not found)",
        "--ort-lib",
        "ORT_DYLIB_PATH",
        "make setup",
    ] {
        assert!(err.contains(want), "lacks {want:?}: {err}");
    }
    // ORT_DYLIB_PATH naming a file that is not a shared library.
    let bogus = dir.write("libonnxruntime.so", "not a library");
    let err = ort.env("ORT_DYLIB_PATH", &bogus).fails();
    assert_contains(&err, &[s(&bogus), "--ort-lib"]);
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    let (dir, model) = identity();
    let img = dir.png("a.png", 4, 4, |_, _| [1, 1, 1]);
    let on_cuda = |backend: &str| {
        Pipe::infer(&model)
            .backend(backend)
            .arg("--device", "cuda")
            .path(&img)
    };
    let err = on_cuda("tract").fails();
    assert!(err.contains("tract backend runs on the CPU only"), "{err}");
    let w = Workdir::binary_release(10);
    let cuda_train = train(&w.data, &w.runs, &weights()).arg("--device", "cuda");
    if nvidia_gpu() {
        // The other side where a GPU is present: training asked for CUDA runs there.
        cuda_train.ok();
        assert_eq!(w.run("r").config()["device"], "cuda");
        return;
    }
    let err = on_cuda("ort").fails();
    assert_contains(
        &err,
        &["CUDA execution provider is not available", "--device cpu"],
    );
    let err = cuda_train.fails();
    assert_contains(&err, &["--device cuda", "no CUDA device", "--device auto"]);
    no_run(&w.runs);
}

/// `pipe infer --shard K/3`: the three shards of a folder (a junk file among its images) classify
/// every file once, and their text and CSV outputs concatenated in shard order (the CSV's first
/// header kept) are byte for byte the unsharded run's; a shard with no files succeeds with empty
/// output; a shard past the count is refused before any work.
#[test]
fn infer_shards_merge_into_the_unsharded_output() {
    let (dir, model) = identity();
    let folder = dir.join("imgs");
    for i in 0..7u8 {
        std::fs::create_dir_all(folder.join(format!("c{i}"))).unwrap();
        png(&folder.join(format!("c{i}/{i}.png")), 4, 4, |_, _| {
            [i * 30, 0, 0]
        });
    }
    std::fs::write(folder.join("c3/junk.jpg"), b"not an image").unwrap();
    for format in ["text", "csv"] {
        let run = |shard: Option<&str>| {
            let mut p = Pipe::infer(&model).format(format).path(&folder);
            if let Some(s) = shard {
                p = p.arg("--shard", s);
            }
            p.output()
        };
        let whole = run(None);
        assert_eq!(whole.status.code(), Some(3), "the junk file is skipped");
        let mut merged = Vec::new();
        let mut codes = Vec::new();
        for k in 0..3 {
            let out = run(Some(&format!("{k}/3")));
            codes.push(out.status.code());
            let mut body = out.stdout.as_slice();
            if format == "csv" && k > 0 {
                let header = body.iter().position(|&b| b == b'\n').unwrap() + 1;
                assert_eq!(&body[..header], &whole.stdout[..header]);
                body = &body[header..];
            }
            merged.extend_from_slice(body);
        }
        assert_eq!(
            String::from_utf8_lossy(&merged),
            String::from_utf8_lossy(&whole.stdout),
            "{format}"
        );
        // 8 files: shards of 3, 3 and 2; the junk file (the fourth, in c3/) is in the second.
        assert_eq!(codes, [Some(0), Some(3), Some(0)], "{format}");
    }
    let one = dir.join("one");
    std::fs::create_dir_all(&one).unwrap();
    png(&one.join("a.png"), 4, 4, |_, _| [1, 2, 3]);
    let empty = Pipe::infer(&model).path(&one).arg("--shard", "1/2").ok();
    assert_eq!(empty.stdout, "");
    assert!(
        empty.stderr.contains("shard 1/2: no files"),
        "{}",
        empty.stderr
    );
    let err = Pipe::infer(&model)
        .path(&one)
        .arg("--shard", "2/2")
        .fails_with(2);
    assert!(err.contains("expected K/N with 0 <= K < N"), "{err}");
}
