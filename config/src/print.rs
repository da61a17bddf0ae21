//! `--print-config`: the effective configuration as TOML, each value with where it came from,
//! secrets masked.

use std::fmt::Write as _;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::file::{configurable, key_of};

/// What a secret's value is shown as.
pub const MASK: &str = "********";

/// Where the file's settings went: `(subcommands, argument id)`.
pub type Injected = [(Vec<String>, String)];

/// The effective configuration of the parsed command line `matches` of `cmd` (built): the
/// binary's own settings, then a table per subcommand that runs.
pub fn render(
    cmd: &Command,
    matches: &ArgMatches,
    injected: &Injected,
    file: Option<&Path>,
    config_env: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Effective configuration of {} (flag > env > file > default).",
        cmd.get_name()
    );
    let _ = match file {
        Some(path) => writeln!(out, "# Configuration file: {}", path.display()),
        None => writeln!(
            out,
            "# No configuration file (--config FILE or {config_env} names one)."
        ),
    };
    let mut level = (cmd, matches);
    let mut commands: Vec<String> = Vec::new();
    loop {
        let (cmd, matches) = level;
        if !commands.is_empty() {
            let _ = writeln!(out, "\n[{}]", commands.join("."));
        }
        for arg in configurable(cmd, &commands) {
            let file = injected
                .iter()
                .any(|(at, id)| *at == commands && id == arg.get_id().as_str());
            out.push_str(&line(arg, matches, file));
            out.push('\n');
        }
        let Some((name, sub_matches)) = matches.subcommand() else {
            break;
        };
        let Some(sub) = cmd.find_subcommand(name) else {
            break;
        };
        commands.push(name.to_owned());
        level = (sub, sub_matches);
    }
    out
}

/// `key = value  # source`, or a commented line for a setting without a value.
fn line(arg: &Arg, matches: &ArgMatches, from_file: bool) -> String {
    let key = key_of(arg);
    let id = arg.get_id().as_str();
    let source = match (from_file, matches.value_source(id)) {
        (_, None) => return format!("# {key} is not set"),
        (true, _) => "file".to_owned(),
        (false, Some(ValueSource::CommandLine)) => "flag".to_owned(),
        (false, Some(ValueSource::EnvVariable)) => match arg.get_env() {
            Some(name) => format!("env {}", name.to_string_lossy()),
            None => "env".to_owned(),
        },
        (false, Some(_)) => "default".to_owned(),
    };
    let raw: Vec<String> = matches
        .get_raw(id)
        .into_iter()
        .flatten()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    // Defaults stay commented out: the output is then a file to start from that sets only
    // what differs, and a default given explicitly could trip a `requires` rule.
    let comment = if source == "default" { "# " } else { "" };
    format!("{comment}{key} = {}  # {source}", value(arg, &raw))
}

/// The value as TOML: masked for a secret, a boolean for a switch, an array where the
/// argument takes several values, an integer when it reads as one, else a string.
fn value(arg: &Arg, raw: &[String]) -> String {
    if arg.is_hide_env_values_set() {
        return toml::Value::String(MASK.to_owned()).to_string();
    }
    let many = matches!(arg.get_action(), ArgAction::Append) || arg.is_last_set();
    let one = |text: &String| match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => text
            .parse::<bool>()
            .map_or_else(|_| toml::Value::String(text.clone()), toml::Value::Boolean),
        // Only where the integer reads back the same ("0600" stays a string).
        _ => match text.parse::<i64>() {
            Ok(number) if number.to_string() == *text => toml::Value::Integer(number),
            _ => toml::Value::String(text.clone()),
        },
    };
    match (many, raw) {
        (false, [single]) => one(single).to_string(),
        (_, values) => toml::Value::Array(values.iter().map(one).collect()).to_string(),
    }
}
