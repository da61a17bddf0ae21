//! What `deploy/systemd/` and `docs/operations.md` tell an operator to run exists: every flag and
//! `MUJIN_*` variable the units name is one the binary's `--help` lists, every command of the
//! guide is a real subcommand with real flags, and `systemd-analyze verify` accepts the units
//! (when systemd is installed; skipped with a message otherwise).

// The whole file is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mujin_tests::binary;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The units and the binary (with the subcommand) each runs.
const UNITS: [(&str, &str, &[&str]); 3] = [
    ("mujin-broker.service", "mujin-broker", &[]),
    ("mujin-management.service", "mujin-management", &["run"]),
    ("mujin-agent@.service", "mujin-agent", &[]),
];

/// Variables the units define for themselves, not read by a binary.
const UNIT_VARIABLES: [&str; 1] = ["MUJIN_AGENT_PROGRAM"];

fn help(name: &str, args: &[&str]) -> String {
    let output = Command::new(binary(name))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{name} {args:?} --help: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn unit_text(unit: &str) -> String {
    std::fs::read_to_string(root().join("deploy/systemd").join(unit)).unwrap()
}

/// The words of `text` that look like `MUJIN_…` variable names.
fn variables(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        // `MUJIN_BROKER_*` names a family, not a variable.
        .filter(|word| word.starts_with("MUJIN_") && !word.ends_with('_'))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The `--flags` among `words`, without any `=value`.
fn flags<'a>(words: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    words
        .into_iter()
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| word.split('=').next().unwrap_or(word))
        .collect()
}

#[test]
fn units_name_only_flags_and_variables_the_binaries_have() {
    for (unit, name, args) in UNITS {
        let text = unit_text(unit);
        let help = help(name, args);
        let exec = text
            .lines()
            .find_map(|line| line.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit} has no ExecStart"));
        let mut words = exec.split_whitespace();
        assert_eq!(
            words.next(),
            Some(format!("/usr/local/bin/{name}").as_str())
        );
        for (position, arg) in args.iter().enumerate() {
            assert_eq!(words.next(), Some(*arg), "{unit}: argument {position}");
        }
        for flag in flags(words.take_while(|word| *word != "--")) {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{unit}: {name} has no {flag}"
            );
        }
        for variable in variables(&text) {
            if UNIT_VARIABLES.contains(&variable.as_str()) {
                continue;
            }
            assert!(
                help.contains(&format!("[env: {variable}="))
                    || help.contains(&format!("[env: {variable}]")),
                "{unit} names {variable}, which `{name} {args:?} --help` does not list"
            );
        }
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(version.status.success());
    // The units name /usr/local/bin/…, where nothing is installed here: verify copies that
    // name the binaries just built instead (verify checks that ExecStart is executable).
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (unit, name, _) in UNITS {
        let text = unit_text(unit).replace(
            &format!("/usr/local/bin/{name}"),
            binary(name).to_str().unwrap(),
        );
        let file_name = unit.replace("@.service", "@pc-01.service");
        let path = dir.path().join(&file_name);
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&files)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Warnings (unknown settings, bad values) come with exit status 0: none is allowed.
    let files_named: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("mujin-"))
        .collect();
    assert!(files_named.is_empty(), "{stderr}");
}

/// The shell lines of the guide's code blocks (continuation lines joined), and its inline code
/// that starts with a mujin binary.
fn guide_commands() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            let spans = line.split('`').skip(1).step_by(2);
            commands.extend(
                spans
                    .filter(|span| span.starts_with("mujin-") && !span.contains('…'))
                    .map(str::to_owned),
            );
            continue;
        }
        let line = line.split(" #").next().unwrap_or(line).trim();
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start);
            continue;
        }
        pending.push_str(line);
        commands.push(std::mem::take(&mut pending));
    }
    commands
}

/// The subcommands a `Commands:` section of a help text lists.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Global flags of `mujin-management` that take a value.
const GLOBAL_FLAGS: [&str; 3] = ["--database-url", "--data-dir", "--key-id"];

#[test]
fn every_command_of_the_operations_guide_exists_with_its_flags() {
    let top = subcommands(&help("mujin-management", &[]));
    let mut checked = 0;
    for command in guide_commands() {
        let words: Vec<&str> = command
            .split_whitespace()
            .take_while(|word| !matches!(*word, ">" | "<" | "|" | "&&" | ";"))
            .collect();
        let Some((&name, rest)) = words.split_first() else {
            continue;
        };
        if !matches!(name, "mujin-management" | "mujin-broker" | "mujin-agent") {
            continue;
        }
        let mut path: Vec<&str> = Vec::new();
        if name == "mujin-management" {
            let mut rest = rest.iter();
            while let Some(word) = rest.next() {
                if GLOBAL_FLAGS.contains(word) {
                    rest.next();
                } else if !word.starts_with('-') {
                    assert!(top.iter().any(|sub| sub == word), "{command}: no {word}");
                    path.push(word);
                    break;
                }
            }
            let nested = subcommands(&help(name, &path));
            if let Some(word) = rest.find(|word| !word.starts_with('-')) {
                if !nested.is_empty() {
                    assert!(nested.iter().any(|sub| sub == word), "{command}: no {word}");
                    path.push(word);
                }
            }
        }
        let help = help(name, &path);
        for flag in flags(rest.iter().copied()) {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{command}: `{name} {path:?}` has no {flag}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} commands found in the guide");
}

#[test]
fn every_variable_of_the_operations_guide_is_read_by_a_binary() {
    let helps = [
        help("mujin-broker", &[]),
        help("mujin-management", &["run"]),
        help("mujin-agent", &[]),
    ]
    .concat();
    let text = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let names = variables(&text);
    assert!(names.len() >= 15, "{names:?}");
    for variable in names {
        if UNIT_VARIABLES.contains(&variable.as_str()) {
            continue;
        }
        assert!(
            helps.contains(&format!("[env: {variable}="))
                || helps.contains(&format!("[env: {variable}]")),
            "docs/operations.md names {variable}, which no binary reads"
        );
    }
}
