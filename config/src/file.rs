//! The configuration file: TOML read and checked against the command's arguments, key by key,
//! into the command-line words each setting stands for.

use std::ffi::OsString;
use std::path::Path;

use clap::{Arg, ArgAction, Command};

use crate::{CONFIG_ID, PRINT_CONFIG_ID};

/// What is wrong with one key of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key:?}: {problem}")]
pub struct KeyError {
    /// The key as written, with its tables: `listen`, `run.password`.
    pub key: String,
    pub problem: String,
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot read it: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Only the position and the reason: toml's own message quotes the line, which may hold a
    /// secret.
    #[error("{path}: line {line}: not valid TOML: {message}")]
    Syntax {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {error}")]
    Key { path: String, error: KeyError },
    #[error(
        "{path}: holds a secret (key {key:?}) but everyone may read it (mode {mode:o}): \
         run `chmod o-r {path}`"
    )]
    Readable {
        path: String,
        key: String,
        mode: u32,
    },
}

/// One setting of the file, checked against its argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSetting {
    /// The subcommands the argument belongs to, from the top (empty: the binary's own).
    pub commands: Vec<String>,
    /// clap's id of the argument.
    pub id: String,
    /// The key as written, with its tables: `listen`, `run.password`.
    pub key: String,
    /// The command-line words that give the same value: `--listen=…`, `--no-stdin`, or
    /// `--` and the program's words for a trailing positional.
    pub words: Vec<OsString>,
    /// The argument is a secret (`hide_env_values`): its value is never shown.
    pub secret: bool,
}

/// Reads and parses the file.
pub fn read(path: &Path) -> Result<toml::Table, FileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: shown.clone(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|error| {
        let offset = error.span().map_or(0, |span| span.start);
        let line = text[..offset.min(text.len())].matches('\n').count() + 1;
        FileError::Syntax {
            path: shown,
            line,
            message: error.message().trim().replace('\n', "; "),
        }
    })
}

/// Refuses a file that holds a secret and that everyone may read.
#[cfg(unix)]
pub fn check_permissions(path: &Path, settings: &[FileSetting]) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(secret) = settings.iter().find(|setting| setting.secret) else {
        return Ok(());
    };
    let shown = path.display().to_string();
    let mode = std::fs::metadata(path)
        .map_err(|source| FileError::Read {
            path: shown.clone(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(FileError::Readable {
            path: shown,
            key: secret.key.clone(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_permissions(_path: &Path, _settings: &[FileSetting]) -> Result<(), FileError> {
    Ok(())
}

/// Checks every key of `table` against `cmd` (built, with `--config` added): top-level keys are
/// the binary's own long flags, a table named after a subcommand holds that subcommand's.
/// Every value is checked by the argument's own parser, whichever subcommand runs.
pub fn settings(cmd: &Command, table: &toml::Table) -> Result<Vec<FileSetting>, KeyError> {
    let mut settings = Vec::new();
    collect(cmd, &[], table, &mut settings)?;
    Ok(settings)
}

fn collect(
    cmd: &Command,
    commands: &[String],
    table: &toml::Table,
    out: &mut Vec<FileSetting>,
) -> Result<(), KeyError> {
    for (key, value) in table {
        let dotted = commands
            .iter()
            .map(String::as_str)
            .chain([key.as_str()])
            .collect::<Vec<_>>()
            .join(".");
        let error = |problem: String| KeyError {
            key: dotted.clone(),
            problem,
        };
        if let Some(arg) = configurable(cmd, commands).find(|arg| key_of(arg) == *key) {
            let words = words(arg, value).map_err(error)?;
            out.push(FileSetting {
                commands: commands.to_vec(),
                id: arg.get_id().to_string(),
                key: dotted.clone(),
                words,
                secret: arg.is_hide_env_values_set(),
            });
        } else if let Some(sub) = subcommands(cmd).find(|sub| sub.get_name() == key) {
            let toml::Value::Table(inner) = value else {
                return Err(error(format!(
                    "`{key}` is a subcommand: expected a table of its settings, got {}",
                    a_type(value)
                )));
            };
            let mut path = commands.to_vec();
            path.push(key.clone());
            collect(sub, &path, inner, out)?;
        } else if key == "config" || key == "print-config" {
            return Err(error("cannot be set in the configuration file".into()));
        } else {
            return Err(error(unknown(cmd, commands, key)));
        }
    }
    Ok(())
}

/// The arguments of `cmd` a file may set: those with a long name, and a trailing positional
/// (the agent's program); the subcommands' copies of global arguments belong to the top.
pub fn configurable<'a>(cmd: &'a Command, commands: &[String]) -> impl Iterator<Item = &'a Arg> {
    let top = commands.is_empty();
    cmd.get_arguments().filter(move |arg| {
        let id = arg.get_id().as_str();
        let own = top || !arg.is_global_set();
        let kind = arg.get_long().is_some() || (arg.is_positional() && arg.is_last_set());
        let meta = matches!(arg.get_action(), ArgAction::Help | ArgAction::HelpShort)
            || matches!(arg.get_action(), ArgAction::HelpLong | ArgAction::Version)
            || id == CONFIG_ID
            || id == PRINT_CONFIG_ID;
        own && kind && !meta && !arg.is_hide_set()
    })
}

/// The subcommands a file may have a table for (not the hidden, internal ones).
pub fn subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|sub| !sub.is_hide_set())
}

/// The file's key for an argument: its long name, or its id in kebab case.
pub fn key_of(arg: &Arg) -> String {
    match arg.get_long() {
        Some(long) => long.to_owned(),
        None => arg.get_id().as_str().replace('_', "-"),
    }
}

/// "unknown key", with the closest known key when one is close (as clap does for flags).
fn unknown(cmd: &Command, commands: &[String], key: &str) -> String {
    let known = configurable(cmd, commands)
        .map(key_of)
        .chain(subcommands(cmd).map(|sub| sub.get_name().to_owned()));
    let best = known
        .map(|candidate| (strsim::jaro(key, &candidate), candidate))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, candidate)) => format!("unknown key; did you mean {candidate:?}?"),
        None => "unknown key".to_owned(),
    }
}

/// The command-line words that set `arg` to the file's `value`, checked by the argument's parser.
fn words(arg: &Arg, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = format!("--{}", key_of(arg));
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            let toml::Value::Boolean(on) = value else {
                return Err(format!("expected true or false, got {}", a_type(value)));
            };
            let given = *on == matches!(arg.get_action(), ArgAction::SetTrue);
            Ok(if given { vec![flag.into()] } else { Vec::new() })
        }
        ArgAction::Count => match value {
            toml::Value::Integer(times @ 0..=255) => Ok(vec![flag.into(); *times as usize]),
            _ => Err(format!(
                "expected a count (0 to 255), got {}",
                a_type(value)
            )),
        },
        _ => {
            let many = matches!(arg.get_action(), ArgAction::Append) || arg.is_last_set();
            let texts = texts(value, many)?;
            for text in &texts {
                check_value(arg, text)?;
            }
            if arg.is_positional() {
                let mut words = vec![OsString::from("--")];
                words.extend(texts.into_iter().map(OsString::from));
                return Ok(words);
            }
            Ok(texts
                .into_iter()
                .map(|text| OsString::from(format!("{flag}={text}")))
                .collect())
        }
    }
}

/// The value as text, like on the command line: strings as they are, numbers, booleans and
/// dates written out; an array only where the argument takes several values.
fn texts(value: &toml::Value, many: bool) -> Result<Vec<String>, String> {
    match value {
        toml::Value::Array(items) if many => items
            .iter()
            .map(|item| {
                scalar(item).ok_or_else(|| {
                    format!("expected an array of values, found {} in it", a_type(item))
                })
            })
            .collect(),
        toml::Value::Array(_) => Err("expected one value, got an array".to_owned()),
        other => scalar(other)
            .map(|text| vec![text])
            .ok_or_else(|| format!("expected a value, got {}", a_type(other))),
    }
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(on) => Some(on.to_string()),
        toml::Value::Datetime(time) => Some(time.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

fn a_type(value: &toml::Value) -> String {
    match value {
        toml::Value::Integer(_) => "an integer".to_owned(),
        toml::Value::Array(_) => "an array".to_owned(),
        other => format!("a {}", other.type_str()),
    }
}

/// Runs the argument's own parser on `text`; the reason names the value unless it is a secret.
fn check_value(arg: &Arg, text: &str) -> Result<(), String> {
    // clap keeps its value parsers' entry point to itself, so the value goes through a command
    // of its own holding only this argument's parser.
    let probe = Command::new("config").no_binary_name(true).arg(
        Arg::new("value")
            .long("value")
            .value_parser(arg.get_value_parser().clone()),
    );
    let Err(error) = probe.try_get_matches_from([OsString::from(format!("--value={text}"))]) else {
        return Ok(());
    };
    let reason = match std::error::Error::source(&error) {
        Some(source) => source.to_string(),
        None if error.kind() == clap::error::ErrorKind::InvalidValue => {
            let names: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|value| value.get_name().to_owned())
                .collect();
            format!("possible values: {}", names.join(", "))
        }
        None => first_line(&error.to_string()),
    };
    if arg.is_hide_env_values_set() {
        // A parser's own message should not repeat a secret; make sure of it.
        let reason = if text.is_empty() {
            reason
        } else {
            reason.replace(text, "********")
        };
        Err(format!("invalid value (not shown): {reason}"))
    } else {
        Err(format!("invalid value {text:?}: {reason}"))
    }
}

/// clap's rendered message without its `error: ` prefix, usage and help lines.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    line.strip_prefix("error: ")
        .unwrap_or(line)
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::sample;

    fn check(text: &str) -> Result<Vec<FileSetting>, KeyError> {
        settings(&sample(), &text.parse::<toml::Table>().unwrap())
    }

    fn words_of(text: &str) -> Vec<Vec<String>> {
        check(text)
            .unwrap()
            .into_iter()
            .map(|setting| {
                setting
                    .words
                    .iter()
                    .map(|word| word.to_string_lossy().into_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn keys_become_the_flags_they_name() {
        assert_eq!(
            words_of("listen = \"127.0.0.1:1\"\nretries = 3\nverbose = true\nquiet = true"),
            vec![
                vec!["--listen=127.0.0.1:1".to_owned()],
                vec![],
                vec!["--retries=3".to_owned()],
                vec!["--verbose".to_owned()],
            ]
        );
        assert_eq!(
            words_of("tag = [\"a\", \"b\"]\nprogram = [\"sh\", \"-c\", \"x\"]"),
            vec![vec!["--", "sh", "-c", "x"], vec!["--tag=a", "--tag=b"]]
        );
    }

    #[test]
    fn subcommand_tables_hold_the_subcommands_flags() {
        let settings = check("[run]\nbroker = \"h:1\"").unwrap();
        assert_eq!(settings[0].commands, vec!["run".to_owned()]);
        assert_eq!(settings[0].key, "run.broker");
        let error = check("[run]\nlisten = \"127.0.0.1:1\"").unwrap_err();
        assert_eq!(error.key, "run.listen");
        assert!(error.problem.starts_with("unknown key"), "{error}");
        let error = check("run = 1").unwrap_err();
        assert!(error.problem.contains("expected a table"), "{error}");
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let error = check("lissen = \"x\"").unwrap_err();
        assert_eq!(
            error.to_string(),
            "key \"lissen\": unknown key; did you mean \"listen\"?"
        );
        let error = check("zzz = 1").unwrap_err();
        assert_eq!(error.to_string(), "key \"zzz\": unknown key");
        assert!(check("config = \"x\"")
            .unwrap_err()
            .problem
            .contains("cannot be set"));
    }

    #[test]
    fn values_are_checked_by_the_arguments_parser() {
        let error = check("listen = \"abc\"").unwrap_err();
        assert_eq!(error.key, "listen");
        assert!(
            error
                .problem
                .starts_with("invalid value \"abc\": invalid socket address"),
            "{error}"
        );
        let error = check("retries = \"many\"").unwrap_err();
        assert!(error.problem.contains("invalid digit"), "{error}");
        let error = check("verbose = \"yes\"").unwrap_err();
        assert_eq!(error.problem, "expected true or false, got a string");
        let error = check("listen = [\"a\"]").unwrap_err();
        assert_eq!(error.problem, "expected one value, got an array");
        let error = check("format = \"xml\"").unwrap_err();
        assert!(
            error.problem.contains("possible values: table, csv"),
            "{error}"
        );
    }

    #[test]
    fn a_refused_secret_is_never_repeated() {
        let error = check("password = \"hunter2\"").unwrap_err();
        assert_eq!(error.key, "password");
        assert!(error.problem.contains("not shown"), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let settings = check("password = \"long-enough\"").unwrap();
        assert!(settings[0].secret);
    }

    #[test]
    fn syntax_errors_give_the_line_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(&path, "listen = \"a\"\npassword = hunter2\n").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn secrets_in_a_world_readable_file_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let secret = check("password = \"long-enough\"").unwrap();
        let error = check_permissions(&path, &secret).unwrap_err().to_string();
        assert!(error.contains("chmod o-r"), "{error}");
        check_permissions(&path, &check("retries = 1").unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        check_permissions(&path, &secret).unwrap();
    }
}
