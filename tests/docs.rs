//! The documentation against the binary: `docs/CLI.md` is the `--help` of `pipe` and of every command
//! (regenerated here; `PIPE_UPDATE_DOCS=1` rewrites the file), every `--flag` that README.md and
//! docs/*.md name exists in the `--help` of its command, and every relative link and anchor between
//! them leads somewhere.
#![cfg(all(feature = "train", feature = "ort", feature = "serve"))]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The width clap wraps help at. With the `wrap_help` feature clap asks the terminal of stdout, stderr
/// and stdin (in that order) for its width and falls back to `COLUMNS`; here none of the three is a
/// terminal, so `COLUMNS` decides.
const HELP_WIDTH: &str = "100";

const CLI_MD: &str = "docs/CLI.md";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `pipe <words> --help`, at [`HELP_WIDTH`] columns, in an empty environment (no `[env: X=value]`
/// from the caller's variables), with trailing spaces removed from every line.
fn help(words: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(words)
        .arg("--help")
        .env_clear()
        .env("COLUMNS", HELP_WIDTH)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run pipe {words:?} --help: {e}"));
    assert!(
        out.status.success(),
        "pipe {words:?} --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The subcommands a help text lists under `Commands:` (`help` left out).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Every command path (`""` for `pipe` itself, `"train"`, `"weights import"`, ...) and its help, in
/// the order `pipe --help` lists them, found by walking the `Commands:` sections.
fn helps() -> &'static Vec<(String, String)> {
    static HELPS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    HELPS.get_or_init(|| {
        let mut all = Vec::new();
        let mut todo = vec![String::new()];
        while let Some(path) = todo.pop() {
            let words: Vec<&str> = path.split_whitespace().collect();
            let text = help(&words);
            let subs = subcommands(&text);
            for sub in subs.iter().rev() {
                todo.push(format!("{path} {sub}").trim().to_string());
            }
            all.push((path, text));
        }
        all
    })
}

fn help_of(command: &str) -> Option<&'static str> {
    helps()
        .iter()
        .find(|(c, _)| c == command)
        .map(|(_, h)| h.as_str())
}

/// docs/CLI.md as the binary's help makes it.
fn cli_reference() -> String {
    let mut md = String::from(
        "# Command-line reference\n\n\
         The `--help` of `pipe` and of each of its commands, as the binary prints it at a width of \
         100 columns.\nThis file is generated: `PIPE_UPDATE_DOCS=1 cargo test --release --test docs` \
         rewrites it, and\n`cargo test --release --test docs` fails when it differs from the binary's \
         help.\n",
    );
    for (command, text) in helps() {
        let title = format!("pipe {command}");
        md.push_str(&format!("\n## {}\n\n```text\n", title.trim()));
        md.push_str(text);
        md.push_str("\n```\n");
    }
    md
}

#[test]
fn cli_reference_is_the_binarys_help() {
    let commands: Vec<&str> = helps().iter().map(|(c, _)| c.as_str()).collect();
    for expected in [
        "",
        "train",
        "evaluate",
        "sweep",
        "summary",
        "export",
        "inspect",
        "infer",
        "serve",
        "weights import",
    ] {
        assert!(
            commands.contains(&expected),
            "`pipe {expected}` not found among {commands:?}"
        );
    }
    let want = cli_reference();
    let path = root().join(CLI_MD);
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have == want {
        return;
    }
    if std::env::var_os("PIPE_UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
        eprintln!("rewrote {CLI_MD} from the binary's --help");
        return;
    }
    let (line, (a, b)) = have
        .lines()
        .chain(std::iter::repeat(""))
        .zip(want.lines().chain(std::iter::repeat("")))
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, pair)| (i + 1, pair))
        .unwrap_or((0, ("", "")));
    panic!(
        "{CLI_MD} differs from the binary's --help, first at line {line}:\n  file:   {a:?}\n  binary: {b:?}\n\
         Rewrite it with: PIPE_UPDATE_DOCS=1 cargo test --release --test docs"
    );
}

/// README.md and docs/*.md except the generated CLI.md, as (name, text).
fn documentation() -> Vec<(String, String)> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md") && !p.ends_with("CLI.md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(root()).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The command-like texts of a markdown file, each with the line it starts on: every logical line
/// of a fenced code block (`\`-continued lines joined, `#` comments removed) and every inline code
/// span outside code blocks (spans may wrap across lines).
fn command_texts(md: &str) -> Vec<(usize, String)> {
    let mut texts = Vec::new();
    let mut in_block = false;
    let mut pending: Option<(usize, String)> = None;
    let mut prose: Vec<(usize, &str)> = Vec::new();
    for (i, line) in md.lines().enumerate() {
        let n = i + 1;
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            prose.push((n, line));
            continue;
        }
        let code = match line.find(" #") {
            Some(at) => &line[..at],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        let (start, mut text) = pending.take().unwrap_or((n, String::new()));
        text.push(' ');
        match code.trim_end().strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                pending = Some((start, text));
            }
            None => {
                text.push_str(code);
                texts.push((start, text));
            }
        }
    }
    // Inline code spans: between pairs of backticks, across line ends.
    let mut open: Option<(usize, String)> = None;
    for (n, line) in prose {
        for (k, part) in line.split('`').enumerate() {
            if k > 0 {
                open = match open.take() {
                    Some(span) => {
                        texts.push(span);
                        None
                    }
                    None => Some((n, String::new())),
                };
            }
            if let Some((_, span)) = open.as_mut() {
                span.push_str(part);
            }
        }
        if let Some((_, span)) = open.as_mut() {
            span.push(' ');
        }
    }
    texts.sort_by_key(|(line, _)| *line);
    texts
}

/// What a command-like text names: (command whose help must list the options, or `None` when the
/// command cannot be told, options). Texts that are not pipe's (`cargo test --release`, `curl ...`)
/// name nothing.
fn named_options(text: &str) -> Vec<(Option<String>, Vec<String>)> {
    let commands: BTreeSet<&str> = helps()
        .iter()
        .filter_map(|(c, _)| c.split_whitespace().next())
        .collect();
    let mut found = Vec::new();
    for command in text.split(['|', ';', '&']) {
        let mut words = command
            .split_whitespace()
            .skip_while(|w| *w == "$" || (w.contains('=') && !w.starts_with('-')))
            .peekable();
        let Some(&first) = words.peek() else {
            continue;
        };
        let program = first.rsplit('/').next().unwrap_or(first);
        let (command, rest): (Option<String>, Vec<&str>) =
            if program == "pipe" || program == "pipe-infer" || program == "$(PIPE)" {
                words.next();
                let rest: Vec<&str> = words.collect();
                match rest.first() {
                    Some(w) if commands.contains(w) => {
                        let path = if *w == "weights" && rest.get(1) == Some(&"import") {
                            "weights import".to_string()
                        } else {
                            w.to_string()
                        };
                        (Some(path), rest)
                    }
                    Some(w) if w.starts_with('-') => (Some(String::new()), rest),
                    _ => (None, rest),
                }
            } else if commands.contains(program) {
                (Some(program.to_string()), words.collect())
            } else if first.starts_with('-') {
                (None, words.collect())
            } else {
                continue;
            };
        let options: Vec<String> = rest.iter().filter_map(|w| option_name(w)).collect();
        if !options.is_empty() {
            found.push((command, options));
        }
    }
    found
}

/// `--name` of `--name`, `--name=value` or `--name,`; `-o` of `-o`; nothing for other words.
fn option_name(word: &str) -> Option<String> {
    let word = word.split('=').next().unwrap_or(word);
    let word = word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let long = word
        .strip_prefix("--")
        .is_some_and(|n| n.len() > 1 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let short =
        word.len() == 2 && word.starts_with('-') && word.as_bytes()[1].is_ascii_alphabetic();
    (long || short).then(|| word.to_string())
}

/// Whether `help` lists `option` as a word of its own (not a prefix of a longer option).
fn lists(help: &str, option: &str) -> bool {
    help.match_indices(option).any(|(at, _)| {
        let before = help[..at].chars().next_back();
        let after = help[at + option.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// The options a documentation text names that the binary's help does not list, as messages.
fn unknown_options(name: &str, md: &str) -> (usize, Vec<String>) {
    let every_help: String = helps().iter().map(|(_, h)| h.as_str()).collect();
    let mut checked = 0;
    let mut unknown = Vec::new();
    for (line, text) in command_texts(md) {
        for (command, options) in named_options(&text) {
            for option in options {
                checked += 1;
                let (ok, whose) = match &command {
                    Some(c) => (
                        help_of(c).is_some_and(|h| lists(h, &option)),
                        format!("`pipe {c} --help`").replace("pipe  ", "pipe "),
                    ),
                    None => (lists(&every_help, &option), "any command's --help".into()),
                };
                if !ok {
                    unknown.push(format!(
                        "{name}:{line}: {option} (in `{}`) is not in {whose}",
                        text.trim()
                    ));
                }
            }
        }
    }
    (checked, unknown)
}

#[test]
fn every_option_the_documentation_names_exists() {
    let mut checked = 0;
    let mut unknown = Vec::new();
    for (name, md) in documentation() {
        let (n, mut bad) = unknown_options(&name, &md);
        checked += n;
        unknown.append(&mut bad);
    }
    assert!(
        unknown.is_empty(),
        "options the documentation names that pipe does not have:\n{}",
        unknown.join("\n")
    );
    // The scan itself: the documentation names well over a hundred options.
    assert!(
        checked > 100,
        "only {checked} options found in the documentation"
    );
}

#[test]
fn the_option_scan_finds_a_misspelt_option_and_its_command() {
    let md = "Run `pipe train --data my-photos --presets photos`, then\n\
              ```sh\npipe infer --model m.onnx \\\n  --top-k 2 --topk 3 x/   # --nothing here\n```\n\
              and `--pooling max` or `--poling max`; `cargo test --release` is not pipe's.\n\
              `pipe weights import a.onnx -o b --allow-unverified --force`\n";
    let (checked, unknown) = unknown_options("t.md", md);
    assert_eq!(checked, 10, "{unknown:?}");
    let options: Vec<&str> = unknown
        .iter()
        .map(|m| m.split(": ").nth(1).unwrap().split(' ').next().unwrap())
        .collect();
    assert_eq!(
        options,
        ["--presets", "--topk", "--poling", "--force"],
        "{unknown:?}"
    );
    assert!(unknown[0].starts_with("t.md:1: --presets"), "{unknown:?}");
    assert!(unknown[1].starts_with("t.md:3: --topk"), "{unknown:?}");
    assert!(
        unknown[1].ends_with("is not in `pipe infer --help`"),
        "{unknown:?}"
    );
    assert!(
        unknown[2].ends_with("is not in any command's --help"),
        "{unknown:?}"
    );
    assert!(
        unknown[3].ends_with("is not in `pipe weights import --help`"),
        "{unknown:?}"
    );
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (outside code blocks).
fn anchors(md: &str) -> BTreeSet<String> {
    let mut in_block = false;
    let mut set = BTreeSet::new();
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if !in_block && line.starts_with('#') {
            set.insert(anchor(line.trim_start_matches('#')));
        }
    }
    set
}

/// The targets of a markdown file's `[text](target)` links.
fn links(md: &str) -> Vec<String> {
    md.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_relative_link_and_anchor_of_the_documentation_leads_somewhere() {
    let mut files: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (name, text) in documentation() {
        files.insert(root().join(name), text);
    }
    files.insert(
        root().join(CLI_MD),
        std::fs::read_to_string(root().join(CLI_MD)).unwrap(),
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for (file, text) in &files {
        for target in links(text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            checked += 1;
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !dest.exists() {
                broken.push(format!("{}: {target}: no such file", file.display()));
                continue;
            }
            if !fragment.is_empty() {
                let md = files
                    .get(&normalise(&dest))
                    .cloned()
                    .unwrap_or_else(|| std::fs::read_to_string(&dest).unwrap_or_default());
                if !anchors(&md).contains(fragment) {
                    broken.push(format!("{}: {target}: no such heading", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 20, "only {checked} relative links found");
}

/// `a/docs/../README.md` as `a/README.md`.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
