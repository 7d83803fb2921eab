//! The command line, parsed by `clap`: `--dev`, `--config` and one flag per
//! entry of the settings table. clap knows each flag's environment variable
//! (so `--help` lists it) but does not read it: values come through
//! [`super::Env`] in [`super::sources`], which keeps tests off the process
//! environment and applies one rule for all sources (flag > env > file).
//!
//! clap stops at the first bad argument; to report every problem at once,
//! [`parse`] records it, drops the offending argument and parses again.

use std::collections::HashMap;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};

use super::settings::{DefaultText, Meta, SETTINGS};
use super::{ConfigError, CONFIG_ENV, CONFIG_FLAG};

const BIN: &str = "switchboard-server";

#[derive(Parser, Debug)]
#[command(
    name = BIN,
    version,
    about = "WebRTC signaling server",
    after_help = "Precedence: flag > environment > config file > default.",
    args_override_self = true,
    disable_help_flag = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// in-process bus and a random JWT secret; prints a token and the demo URL
    #[arg(long)]
    dev: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Print a token signed with the configured key (same config sources as the server)
    #[command(
        args_override_self = true,
        disable_help_flag = true,
        after_help = "The token goes to stdout, nothing else. See docs/tokens.md for the claims."
    )]
    Token {
        #[command(flatten)]
        token: TokenArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// The `token` subcommand's own arguments, as given; `crate::token` checks them.
#[derive(clap::Args, Debug, Default, Clone, PartialEq, Eq)]
pub struct TokenArgs {
    /// user id (`sub` claim); required
    #[arg(long, value_name = "USER_ID", allow_hyphen_values = true)]
    pub sub: Option<String>,
    /// display name (`name` claim) [default: the user id]
    #[arg(long, allow_hyphen_values = true)]
    pub name: Option<String>,
    /// a room the token may join; repeat for several [default: every room]
    #[arg(long = "room", value_name = "ROOM_ID", allow_hyphen_values = true)]
    pub rooms: Vec<String>,
    /// lifetime, e.g. 90s, 15m, 1h, 7d [default: 1h]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub ttl: Option<String>,
    /// a grant for the server API (room_admin); repeat for several
    #[arg(long = "grant", value_name = "GRANT", allow_hyphen_values = true)]
    pub grants: Vec<String>,
    /// a JSON object carried as the `metadata` claim
    #[arg(long, value_name = "JSON", allow_hyphen_values = true)]
    pub metadata: Option<String>,
}

/// `--help`, `--config` and the settings flags, on the server and on `token`.
#[derive(clap::Args, Debug)]
struct ConfigArgs {
    /// YAML config file
    #[arg(long, value_name = "FILE", env = CONFIG_ENV, hide_env_values = true, allow_hyphen_values = true)]
    config: Option<String>,
    /// print help
    #[arg(short = 'h', long, action = ArgAction::SetTrue)]
    help: bool,
    #[command(flatten)]
    flags: Flags,
}

/// The settings flags given, by YAML key.
#[derive(Debug, Default)]
struct Flags(HashMap<&'static str, String>);

impl clap::Args for Flags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(SETTINGS.iter().map(flag_arg))
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for Flags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Flags::default();
        flags.update_from_arg_matches(m)?;
        Ok(flags)
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for st in SETTINGS {
            if let Some(v) = m.get_one::<String>(st.key) {
                self.0.insert(st.key, v.clone());
            }
        }
        Ok(())
    }
}

fn flag_arg(st: &'static Meta) -> Arg {
    let default = match st.default {
        DefaultText::Value("") | DefaultText::Unset("") => String::new(),
        DefaultText::Value(v) | DefaultText::Unset(v) => format!(" [default: {v}]"),
    };
    Arg::new(st.key)
        .long(st.flag.trim_start_matches("--"))
        .env(st.env)
        // `--help` must never print a secret taken from the environment.
        .hide_env_values(true)
        .value_name(if st.list { "LIST" } else { "VALUE" })
        // A value may start with '-' (`--rate-limit-per-second -3` is then
        // reported as a bad value, not as an unknown flag).
        .allow_hyphen_values(true)
        .action(ArgAction::Set)
        .help(format!("{} (YAML: {}){default}", st.help, st.key))
}

/// What the command line asks for, before any setting is typed.
#[derive(Debug, Default)]
pub struct Args {
    pub help: Help,
    pub version: bool,
    pub dev: bool,
    /// `Some` for the `token` subcommand.
    pub token: Option<TokenArgs>,
    pub config: Option<String>,
    /// Settings flags by YAML key.
    pub flags: HashMap<&'static str, String>,
}

/// Which `--help` was asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Help {
    #[default]
    No,
    Server,
    Token,
}

/// `--help` text.
pub fn usage() -> String {
    Cli::command().render_help().to_string()
}

/// `token --help` text.
pub fn token_usage() -> String {
    let mut cmd = Cli::command();
    // Building sets the subcommand's name in its usage line.
    cmd.build();
    match cmd.find_subcommand_mut("token") {
        Some(sub) => sub.render_help().to_string(),
        None => usage(),
    }
}

/// Parses `args` (without the program name); every bad argument is one error.
pub fn parse(args: &[String], errors: &mut Vec<ConfigError>) -> Args {
    // The environment is read through `Env`, never by clap.
    let mut cmd = Cli::command()
        .mut_args(|a| a.env(None))
        .mut_subcommands(|s| s.mut_args(|a| a.env(None)));
    let mut args: Vec<String> = args.to_vec();
    // Each round either succeeds or removes at least one argument.
    loop {
        let argv = std::iter::once(BIN.to_owned()).chain(args.iter().cloned());
        let err = match cmd.try_get_matches_from_mut(argv) {
            Ok(m) => {
                return match Cli::from_arg_matches(&m) {
                    Ok(cli) => from_cli(cli),
                    Err(e) => {
                        errors.push(command_line_error(&e));
                        Args::default()
                    }
                }
            }
            Err(e) => e,
        };
        if err.kind() == ErrorKind::DisplayVersion {
            return Args {
                version: true,
                ..Args::default()
            };
        }
        match recover(&err, &mut args) {
            Some(e) => errors.push(e),
            None => {
                errors.push(command_line_error(&err));
                return Args::default();
            }
        }
    }
}

/// Flattens what clap matched; flags after `token` override those before it.
fn from_cli(cli: Cli) -> Args {
    let mut args = Args {
        help: if cli.config.help {
            Help::Server
        } else {
            Help::No
        },
        dev: cli.dev,
        config: cli.config.config,
        flags: cli.config.flags.0,
        ..Args::default()
    };
    if let Some(Sub::Token { token, config }) = cli.command {
        if config.help {
            args.help = Help::Token;
        }
        args.config = config.config.or(args.config);
        args.flags.extend(config.flags.0);
        args.token = Some(token);
    }
    args
}

fn context(err: &clap::Error, kind: ContextKind) -> Option<&str> {
    match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s),
        _ => None,
    }
}

/// The error for what clap refused, with that argument removed from `args`;
/// `None` when the error names no argument that can be removed.
fn recover(err: &clap::Error, args: &mut Vec<String>) -> Option<ConfigError> {
    match err.kind() {
        ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand => {
            let arg = context(err, ContextKind::InvalidArg)
                .or_else(|| context(err, ContextKind::InvalidSubcommand))?;
            let i = args
                .iter()
                .position(|a| a == arg || a.starts_with(&format!("{arg}=")))?;
            let removed = args.remove(i);
            let message = if arg.starts_with('-') {
                // Drop what looks like its value so it is not reported too.
                if !removed.contains('=') && args.get(i).is_some_and(|v| !v.starts_with('-')) {
                    args.remove(i);
                }
                "unknown flag (see --help)"
            } else {
                "unexpected argument (settings are given as --flag value)"
            };
            Some(ConfigError {
                setting: format!("command line argument {arg:?}"),
                message: message.into(),
            })
        }
        // Every option accepts values starting with '-', so a missing value
        // can only be the last argument.
        ErrorKind::InvalidValue if context(err, ContextKind::InvalidValue) == Some("") => {
            let flag = context(err, ContextKind::InvalidArg)?
                .split_whitespace()
                .next()?
                .to_owned();
            if args.last() != Some(&flag) {
                return None;
            }
            args.pop();
            let setting = match SETTINGS.iter().find(|s| s.flag == flag) {
                Some(st) => ConfigError::label(st),
                None if flag == CONFIG_FLAG => {
                    format!("config file ({CONFIG_ENV} / {CONFIG_FLAG})")
                }
                None => format!("command line argument {flag:?}"),
            };
            Some(ConfigError {
                setting,
                message: format!("{flag} needs a value"),
            })
        }
        _ => None,
    }
}

/// clap's own message, on one line.
fn command_line_error(err: &clap::Error) -> ConfigError {
    let text = err.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    ConfigError {
        setting: "command line".into(),
        message: format!("{first} (see --help)"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::settings;
    use super::*;

    #[test]
    fn every_setting_has_a_flag_clap_accepts() {
        // clap's debug assertions check the whole command: ids, longs, names.
        Cli::command().debug_assert();
        for st in SETTINGS {
            assert!(
                settings::lookup(st.key).is_some_and(|m| m.flag == st.flag),
                "{}",
                st.key
            );
        }
    }
}
