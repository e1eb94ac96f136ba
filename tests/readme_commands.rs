//! Every `alignsam` command in the README's code blocks parses with the command line as built:
//! a renamed flag or subcommand fails here before a user copies the command.
// The tests run the `alignsam` binary, which the `cli` feature builds.
#![cfg(feature = "cli")]

use clap::Parser;

/// The commands of the shell code blocks of a markdown text, continuation lines joined, split
/// at `&&`, comments dropped, as argument lists after the program (`alignsam ...` and
/// `cargo run --release [--features ...] -- ...`).
fn commands(markdown: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    let mut in_block = false;
    let mut joined = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block && line.trim_start().starts_with("```sh");
            continue;
        }
        if !in_block || line.trim_start().starts_with('#') {
            continue;
        }
        joined.push_str(line.trim_end().trim_end_matches('\\'));
        joined.push(' ');
        if line.trim_end().ends_with('\\') {
            continue;
        }
        for part in joined.split("&&") {
            // A command substitution is one argument to the command around it.
            let Some(words) = shlex::split(&without_substitutions(part)) else {
                panic!("unbalanced quotes in {part:?}");
            };
            let args = match words.iter().position(|w| w == "alignsam") {
                Some(0) => Some(words[1..].to_vec()),
                // `cargo run ... -- ARGS` runs alignsam unless it names an example.
                _ if words.first().is_some_and(|w| w == "cargo")
                    && words.get(1).is_some_and(|w| w == "run")
                    && !words.iter().any(|w| w == "--example") =>
                {
                    words
                        .iter()
                        .position(|w| w == "--")
                        .map(|i| words[i + 1..].to_vec())
                }
                _ => None,
            };
            if let Some(args) = args {
                out.push(args);
            }
        }
        joined.clear();
    }
    out
}

/// `$(...)` replaced by a plain word, so that the shell-word split keeps it one argument.
fn without_substitutions(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        out.push_str("SUBSTITUTED");
        rest = rest[i..].find(')').map_or("", |j| &rest[i + j + 1..]);
    }
    out + rest
}

#[test]
fn every_readme_command_parses() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for file in [
        "README.md",
        "models/README.md",
        "docs/agent.md",
        "docs/engines-and-precisions.md",
        "docs/performance.md",
        "docs/small-sam.md",
        "docs/experiments.md",
    ] {
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            continue;
        };
        for args in commands(&text) {
            // Subcommands behind features this build lacks are not the README's fault.
            if args.first().is_some_and(|c| c == "train" || c == "eval") && !cfg!(feature = "train")
            {
                continue;
            }
            let argv = std::iter::once("alignsam".to_string()).chain(args.iter().cloned());
            if let Err(e) = alignsam::cli::Cli::try_parse_from(argv) {
                panic!("{file}: `alignsam {}` does not parse:\n{e}", args.join(" "));
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "only {checked} commands found: is the parser right?"
    );
}

#[test]
fn the_extractor_joins_lines_and_splits_chains() {
    let md = "text\n```sh\n# a comment\n.ci/setup && cargo run --release -- info x && alignsam \\\n    bench --frames 5 --out out/$(basename $d)\n```\n```text\nalignsam not-a-command\n```\n";
    assert_eq!(
        commands(md),
        vec![
            vec!["info".to_string(), "x".to_string()],
            vec![
                "bench".to_string(),
                "--frames".to_string(),
                "5".to_string(),
                "--out".to_string(),
                "out/SUBSTITUTED".to_string()
            ],
        ]
    );
}
