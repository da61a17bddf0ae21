//! Tests of the whole parse (file, environment, flags) on a sample command.

use std::io::Write as _;
use std::net::SocketAddr;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use super::*;

#[derive(Debug, Parser)]
#[command(name = "sample")]
pub struct Sample {
    #[arg(long, env = "SAMPLE_LISTEN", default_value = "127.0.0.1:1883")]
    listen: SocketAddr,
    #[arg(long, env = "SAMPLE_RETRIES", default_value_t = 1)]
    retries: u32,
    /// Set from the environment by one test only (the environment is the whole process's).
    #[arg(long, env = "SAMPLE_TIMEOUT", default_value_t = 10)]
    timeout: u32,
    #[arg(long)]
    verbose: bool,
    #[arg(long, action = ArgAction::SetFalse)]
    quiet: bool,
    /// A secret whose parser repeats the value it refuses, as careless parsers do.
    #[arg(long, env = "SAMPLE_PASSWORD", hide_env_values = true, value_parser = password)]
    password: Option<String>,
    #[arg(long)]
    tag: Vec<String>,
    #[arg(long, value_enum)]
    format: Option<Format>,
    #[arg(last = true)]
    program: Vec<String>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Clone, ValueEnum)]
enum Format {
    Table,
    Csv,
}

#[derive(Debug, Subcommand)]
enum Sub {
    Run {
        #[arg(long, default_value = "h:1")]
        broker: String,
        #[arg(long)]
        user: String,
    },
}

fn password(text: &str) -> Result<String, String> {
    if text.len() < 11 {
        return Err(format!("{text:?} is too short"));
    }
    Ok(text.to_owned())
}

/// The sample command as the file is checked against it.
pub fn sample() -> Command {
    let mut cmd = with_config_flags(Sample::command(), "SAMPLE_CONFIG");
    cmd.build();
    cmd
}

fn config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn parse(file: &tempfile::NamedTempFile, args: &[&str]) -> Result<Parsed<Sample>, Error> {
    let path = file.path().to_str().unwrap();
    let argv = ["sample", "--config", path]
        .into_iter()
        .chain(args.iter().copied());
    try_parse_from::<Sample, _, _>("SAMPLE_CONFIG", argv)
}

#[test]
fn the_file_fills_what_flags_do_not_give() {
    let file = config("listen = \"10.0.0.1:1\"\nretries = 5\nverbose = true\nquiet = true\ntag = [\"a\"]\nprogram = [\"sh\", \"-c\", \"x\"]");
    let flags = parse(&file, &["--retries", "7"]).unwrap().flags;
    assert_eq!(flags.listen, "10.0.0.1:1".parse().unwrap());
    assert_eq!(flags.retries, 7);
    assert!(flags.verbose && flags.quiet);
    assert_eq!(flags.tag, vec!["a".to_owned()]);
    assert_eq!(flags.program, vec!["sh", "-c", "x"]);
    // The command line's program wins over the file's.
    let flags = parse(&file, &["--", "true"]).unwrap().flags;
    assert_eq!(flags.program, vec!["true"]);
}

#[test]
fn the_environment_beats_the_file_and_flags_beat_the_environment() {
    // Only this test sets SAMPLE_TIMEOUT.
    std::env::set_var("SAMPLE_TIMEOUT", "6");
    let file = config("timeout = 5");
    let env = parse(&file, &[]);
    let flag = parse(&file, &["--timeout", "7"]);
    std::env::remove_var("SAMPLE_TIMEOUT");
    let env = env.unwrap().flags;
    assert_eq!(env.timeout, 6);
    assert_eq!(flag.unwrap().flags.timeout, 7);
}

#[test]
fn subcommand_tables_apply_when_the_subcommand_runs() {
    let file = config("retries = 2\n[run]\nuser = \"u\"");
    let flags = parse(&file, &["run"]).unwrap().flags;
    assert_eq!(flags.retries, 2);
    match flags.command {
        Some(Sub::Run { broker, user }) => {
            assert_eq!((broker.as_str(), user.as_str()), ("h:1", "u"))
        }
        None => panic!("run was not parsed"),
    }
    let flags = parse(&file, &["run", "--user", "v"]).unwrap().flags;
    assert!(matches!(flags.command, Some(Sub::Run { user, .. }) if user == "v"));
    // Without the subcommand, its table is checked but not used.
    assert!(parse(&file, &[]).unwrap().flags.command.is_none());
    let bad = config("[run]\nuser = \"u\"\nbrokr = \"x\"");
    let error = parse(&bad, &[]).unwrap_err().to_string();
    assert!(
        error.ends_with("key \"run.brokr\": unknown key; did you mean \"broker\"?"),
        "{error}"
    );
}

#[test]
fn required_arguments_may_come_from_the_file_and_clap_still_checks_the_rest() {
    let file = config("");
    let error = parse(&file, &["run"]).unwrap_err();
    let Error::Command {
        error,
        file: Some(_),
    } = error
    else {
        panic!("not clap's error: {error}");
    };
    assert_eq!(
        error.kind(),
        clap::error::ErrorKind::MissingRequiredArgument
    );
}

#[test]
fn file_errors_name_the_file_and_the_key() {
    let file = config("listen = \"abc\"");
    let error = parse(&file, &[]).unwrap_err().to_string();
    let path = file.path().display().to_string();
    assert!(
        error.starts_with(&format!(
            "{path}: key \"listen\": invalid value \"abc\": invalid socket address"
        )),
        "{error}"
    );
    // Even when a flag gives the key: the file is checked whole.
    assert!(parse(&file, &["--listen", "127.0.0.1:2"]).is_err());
}

#[test]
fn print_config_shows_sources_and_masks_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let file = config("listen = \"10.0.0.1:1\"\npassword = \"a-long-secret\"\n[run]\nuser = \"u\"");
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let printed = parse(&file, &["--verbose", "--print-config", "run"])
        .unwrap()
        .printed
        .unwrap();
    assert!(
        printed.contains("listen = \"10.0.0.1:1\"  # file\n"),
        "{printed}"
    );
    assert!(
        printed.contains("\n# retries = 1  # default\n"),
        "{printed}"
    );
    assert!(printed.contains("verbose = true  # flag\n"), "{printed}");
    assert!(
        printed.contains("password = \"********\"  # file\n"),
        "{printed}"
    );
    assert!(printed.contains("# format is not set\n"), "{printed}");
    assert!(
        printed.contains("\n[run]\n# broker = \"h:1\"  # default\nuser = \"u\"  # file\n"),
        "{printed}"
    );
    assert!(!printed.contains("a-long-secret"), "{printed}");
    // What is printed reads back as TOML.
    printed.parse::<toml::Table>().unwrap();
    assert!(parse(&file, &[]).unwrap().printed.is_none());
}

#[test]
fn without_a_file_nothing_changes() {
    let parsed =
        try_parse_from::<Sample, _, _>("SAMPLE_CONFIG", ["sample", "--retries", "3"]).unwrap();
    assert_eq!(parsed.flags.retries, 3);
    let error = try_parse_from::<Sample, _, _>("SAMPLE_CONFIG", ["sample", "--help"]).unwrap_err();
    let Error::Command { error, .. } = error else {
        panic!("not clap's help")
    };
    assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp);
    assert!(error.to_string().contains("--print-config"));
}

/// The demo's shape: its own flags conflict with a hidden subcommand that passes everything on.
#[derive(Debug, Parser)]
#[command(name = "demo", args_conflicts_with_subcommands = true)]
struct Demo {
    #[arg(long, default_value_t = 30)]
    duration: u64,
    #[command(subcommand)]
    command: Option<Inner>,
}

#[derive(Debug, Subcommand)]
enum Inner {
    #[command(hide = true, disable_help_flag = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

#[test]
fn a_pass_through_subcommand_gets_its_words_untouched() {
    let file = config("duration = 5\n");
    let path = file.path().to_str().unwrap();
    let demo = |args: &[&str]| {
        let argv = ["demo", "--config", path]
            .into_iter()
            .chain(args.iter().copied());
        try_parse_from::<Demo, _, _>("DEMO_CONFIG", argv)
            .unwrap()
            .flags
    };
    assert_eq!(demo(&[]).duration, 5);
    // The demo starts its agents as `mujin-demo agent …`, where the file comes from the
    // environment if at all (`--config` before `agent` would conflict, as any demo flag does).
    // Only this test sets DEMO_CONFIG.
    std::env::set_var("DEMO_CONFIG", path);
    let inner =
        try_parse_from::<Demo, _, _>("DEMO_CONFIG", ["demo", "agent", "--store", "s", "--", "sh"]);
    std::env::remove_var("DEMO_CONFIG");
    let inner = inner.unwrap().flags;
    let Some(Inner::Agent { args }) = inner.command else {
        panic!("no agent: {inner:?}");
    };
    assert_eq!(args, vec!["--store", "s", "--", "sh"]);
    // The hidden subcommand has no table in the file.
    let bad = config("[agent]\nstore = \"s\"\n");
    assert!(parse_demo_error(&bad).contains("key \"agent\": unknown key"));
}

fn parse_demo_error(file: &tempfile::NamedTempFile) -> String {
    let argv = ["demo", "--config", file.path().to_str().unwrap()];
    try_parse_from::<Demo, _, _>("DEMO_CONFIG", argv)
        .unwrap_err()
        .to_string()
}
