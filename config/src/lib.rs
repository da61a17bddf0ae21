//! Settings of every mujin binary from a TOML file, environment variables and flags.
//!
//! Each binary declares its flags with clap derive as before (with `env = "MUJIN_…"` where it
//! reads the environment) and parses them with [`parse`] instead of `Parser::parse`. That adds
//! two flags, global to every subcommand:
//!
//! - `--config FILE` (or the binary's `MUJIN_<BINARY>_CONFIG`): a TOML file whose keys are the
//!   long flag names (`listen = "127.0.0.1:1883"`), a table named after a subcommand holding
//!   that subcommand's (`[run]`);
//! - `--print-config`: print the effective configuration, each value with its source, secrets
//!   masked, and exit.
//!
//! Precedence is flag > environment > file > default. The file is checked whole against the
//! command ([`file`]): an unknown key (with the closest known one), a value of the wrong type or
//! one the flag's own parser refuses is an error that names the file and the key. Each file
//! value then becomes the command-line words it stands for, added only where clap's
//! `value_source` says neither a flag nor the environment gave the argument, and the whole line
//! is parsed again, so clap's own rules (required, requires, conflicts) hold for file values
//! exactly as for flags.
//!
//! A secret is an argument declared with `hide_env_values = true` — the one marker clap already
//! uses to keep a value off `--help`: its value is shown as `"********"` and never repeated in
//! an error, and a file that sets one must not be readable by everyone.

pub mod file;
pub mod print;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches, Parser};

pub use file::{FileError, FileSetting, KeyError};
pub use print::MASK;

/// clap's id of `--config`.
pub const CONFIG_ID: &str = "config";
/// clap's id of `--print-config`.
pub const PRINT_CONFIG_ID: &str = "print_config";

/// A parsed command line.
#[derive(Debug)]
pub struct Parsed<P> {
    pub flags: P,
    /// The effective configuration, when `--print-config` asked for it.
    pub printed: Option<String>,
}

/// Why the command line and the file do not make a valid configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    File(#[from] FileError),
    /// clap's own error (or `--help`/`--version`), after the file's settings were added.
    #[error("{error}")]
    Command {
        error: clap::Error,
        file: Option<PathBuf>,
    },
}

/// Parses the process's arguments; prints the effective configuration and exits when asked to,
/// prints the error and exits (code 2) when the configuration is not valid.
pub fn parse<P: Parser>(config_env: &'static str) -> P {
    parse_from(config_env, std::env::args_os())
}

/// [`parse`] on the given arguments (the first one is the program name).
pub fn parse_from<P, I, T>(config_env: &'static str, args: I) -> P
where
    P: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    match try_parse_from::<P, _, _>(config_env, args) {
        Ok(Parsed {
            printed: Some(text),
            ..
        }) => {
            print!("{text}");
            std::process::exit(0)
        }
        Ok(parsed) => parsed.flags,
        Err(Error::Command { error, file }) => {
            if let (Some(file), true) = (file, error.use_stderr()) {
                let _ = error.print();
                eprintln!("note: settings from {} were included", file.display());
                std::process::exit(error.exit_code())
            }
            error.exit()
        }
        Err(Error::File(error)) => {
            eprintln!("{}: {error}", P::command().get_name());
            std::process::exit(2)
        }
    }
}

/// Parses `args` with the file's settings added; see the crate's documentation.
pub fn try_parse_from<P, I, T>(config_env: &'static str, args: I) -> Result<Parsed<P>, Error>
where
    P: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = with_config_flags(P::command(), config_env);
    // Lenient: required arguments may still come from the file.
    let mut lenient = cmd.clone().ignore_errors(true);
    lenient.build();
    cmd.build();
    let command_error = |error, file: Option<&PathBuf>| Error::Command {
        error,
        file: file.cloned(),
    };
    let first = match lenient.try_get_matches_from(&argv) {
        Ok(matches) => matches,
        // --help or --version: let the strict parse print them.
        Err(_) => match cmd.clone().try_get_matches_from(&argv) {
            Ok(matches) => matches,
            Err(error) => return Err(command_error(error, None)),
        },
    };
    let path = first.get_one::<PathBuf>(CONFIG_ID).cloned();
    let (argv, injected) = match &path {
        None => (argv, Vec::new()),
        Some(path) => {
            let table = file::read(path)?;
            let settings = file::settings(&cmd, &table).map_err(|error| FileError::Key {
                path: path.display().to_string(),
                error,
            })?;
            file::check_permissions(path, &settings)?;
            with_file_settings(&cmd, &first, argv, settings)
        }
    };
    let mut matches = cmd
        .clone()
        .try_get_matches_from(&argv)
        .map_err(|error| command_error(error, path.as_ref()))?;
    let printed = matches
        .get_flag(PRINT_CONFIG_ID)
        .then(|| print::render(&cmd, &matches, &injected, path.as_deref(), config_env));
    let flags = <P as FromArgMatches>::from_arg_matches_mut(&mut matches)
        .map_err(|error| command_error(error.format(&mut cmd), path.as_ref()))?;
    Ok(Parsed { flags, printed })
}

/// The command with `--config` and `--print-config`.
pub fn with_config_flags(cmd: Command, config_env: &'static str) -> Command {
    cmd.arg(
        Arg::new(CONFIG_ID)
            .long("config")
            .env(config_env)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .global(true)
            .help(
                "TOML file of settings, keyed by the long flag names (see docs/configuration.md); \
                 flags and environment variables take precedence over it",
            ),
    )
    .arg(
        Arg::new(PRINT_CONFIG_ID)
            .long("print-config")
            .action(ArgAction::SetTrue)
            .global(true)
            .help("Print the effective configuration (secrets masked) and exit"),
    )
}

/// The command line with the file's settings added where neither a flag nor the environment
/// gave the argument, and which settings those were. The binary's own arguments go first (so
/// that they stay before a subcommand), a subcommand's go after the user's arguments (but
/// before `--`), a trailing positional (the agent's program) goes last.
fn with_file_settings(
    cmd: &Command,
    first: &ArgMatches,
    argv: Vec<OsString>,
    settings: Vec<FileSetting>,
) -> (Vec<OsString>, Vec<(Vec<String>, String)>) {
    // A binary whose own arguments conflict with its subcommands (the demo's internal agent)
    // takes none of them while a subcommand runs.
    let top_blocked = first.subcommand().is_some() && cmd.is_args_conflicts_with_subcommands_set();
    let has_separator = argv.iter().skip(1).any(|word| word == "--");
    let (mut front, mut back, mut tail) = (Vec::new(), Vec::new(), Vec::new());
    let mut injected = Vec::new();
    for setting in settings {
        let Some(matches) = level(first, &setting.commands) else {
            continue; // a table for a subcommand that does not run
        };
        if setting.commands.is_empty() && top_blocked {
            continue;
        }
        if matches!(
            matches.value_source(&setting.id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let mut words = setting.words;
        if words.first().is_some_and(|word| word == "--") {
            if has_separator {
                words.remove(0);
            }
            tail.extend(words);
        } else if setting.commands.is_empty() {
            front.extend(words);
        } else {
            back.extend(words);
        }
        injected.push((setting.commands, setting.id));
    }
    let mut argv = argv.into_iter();
    let program = argv.next().unwrap_or_else(|| cmd.get_name().into());
    let rest: Vec<OsString> = argv.collect();
    let split = rest
        .iter()
        .position(|word| word == "--")
        .unwrap_or(rest.len());
    let mut line = vec![program];
    line.extend(front);
    line.extend(rest[..split].iter().cloned());
    line.extend(back);
    line.extend(rest[split..].iter().cloned());
    line.extend(tail);
    (line, injected)
}

/// The matches of the subcommands `commands`, if they run.
fn level<'a>(matches: &'a ArgMatches, commands: &[String]) -> Option<&'a ArgMatches> {
    let mut level = matches;
    for name in commands {
        match level.subcommand() {
            Some((running, sub)) if running == name => level = sub,
            _ => return None,
        }
    }
    Some(level)
}

#[cfg(test)]
mod tests;
