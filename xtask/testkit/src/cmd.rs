//! One way to run a command and check how it ended.
//!
//! An extension of [`std::process::Command`] rather than a shell DSL such
//! as `xshell`: the callers already build `Command`s (with `current_dir`,
//! `env`, piped streams), tests and xtask both need the failure to carry
//! the command line, the exit status and what the command printed on
//! stderr (xshell's `read` leaves stderr on the terminal), and a
//! [`CmdError`] converts into `anyhow::Error` for xtask as readily as a
//! test unwraps it.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::process::{Command, ExitStatus, Output, Stdio};

/// How running a command went wrong.
#[derive(Debug)]
pub enum CmdError {
    /// The program could not be started.
    Spawn {
        /// The command line, for the message.
        command: String,
        /// Why it could not start.
        source: io::Error,
        /// The Debian package of the program where it is one of
        /// [`TOOLS`](crate::TOOLS) and was not found.
        package: Option<&'static str>,
    },
    /// It ran and exited unsuccessfully, or was killed by a signal.
    Failed {
        /// The command line, for the message.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stdout, where that was captured.
        stdout: String,
        /// What it printed on stderr, where that was captured.
        stderr: String,
    },
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdError::Spawn {
                command,
                package: Some(package),
                ..
            } => {
                let program = command.split(' ').next().unwrap_or(command);
                write!(f, "{}", crate::tools::missing_tool_message(program, package))
            }
            CmdError::Spawn { command, source, .. } => write!(f, "cannot run `{command}`: {source}"),
            CmdError::Failed {
                command,
                status,
                stdout,
                stderr,
            } => {
                write!(f, "`{command}` failed ({status})")?;
                for stream in [stdout, stderr] {
                    let stream = stream.trim_end();
                    if !stream.is_empty() {
                        write!(f, "\n{stream}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for CmdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CmdError::Spawn { source, .. } => Some(source),
            CmdError::Failed { .. } => None,
        }
    }
}

/// Running a [`Command`] and checking its exit status.
pub trait Checked {
    /// Runs the command with the streams as they are set (inherited by
    /// default) and waits; an error unless it exits with status 0.
    fn run_checked(&mut self) -> Result<(), CmdError>;

    /// Runs the command with stdout and stderr captured (stdin empty) and
    /// returns stdout; an error unless it exits with status 0, which
    /// carries both streams.
    fn read_checked(&mut self) -> Result<String, CmdError>;

    /// Runs the command with stdout and stderr captured (stdin empty) and
    /// returns its output however it exited; an error only when it cannot
    /// start. For callers that look at a failure themselves.
    fn output_checked(&mut self) -> Result<Output, CmdError>;
}

impl Checked for Command {
    fn run_checked(&mut self) -> Result<(), CmdError> {
        let status = self.status().map_err(|e| spawn_error(self, e))?;
        check(self, status, String::new(), String::new())
    }

    fn read_checked(&mut self) -> Result<String, CmdError> {
        let output = self.output_checked()?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        check(self, output.status, stdout.clone(), stderr)?;
        Ok(stdout)
    }

    fn output_checked(&mut self) -> Result<Output, CmdError> {
        self.stdin(Stdio::null()).output().map_err(|e| spawn_error(self, e))
    }
}

fn check(command: &Command, status: ExitStatus, stdout: String, stderr: String) -> Result<(), CmdError> {
    if status.success() {
        return Ok(());
    }
    Err(CmdError::Failed {
        command: command_line(command),
        status,
        stdout,
        stderr,
    })
}

fn spawn_error(command: &Command, source: io::Error) -> CmdError {
    let program = command.get_program().to_string_lossy();
    let package = (source.kind() == io::ErrorKind::NotFound)
        .then(|| crate::TOOLS.iter().find(|(tool, _)| *tool == program))
        .flatten()
        .map(|(_, package)| *package);
    CmdError::Spawn {
        command: command_line(command),
        source,
        package,
    }
}

/// The command as a shell line, for messages: the program and its
/// arguments, those with spaces or quotes in single quotes.
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_checked_returns_stdout_of_a_success() {
        let out = Command::new("sh").args(["-c", "echo out; echo err >&2"]).read_checked();
        assert_eq!(out.unwrap(), "out\n");
    }

    #[test]
    fn a_failure_carries_the_command_status_and_both_streams() {
        let error = Command::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .read_checked()
            .unwrap_err();
        assert!(matches!(&error, CmdError::Failed { status, .. } if status.code() == Some(3)));
        assert_eq!(
            error.to_string(),
            "`sh -c 'echo out; echo err >&2; exit 3'` failed (exit status: 3)\nout\nerr"
        );
        let error = Command::new("false").run_checked().unwrap_err();
        assert_eq!(error.to_string(), "`false` failed (exit status: 1)");
        assert!(Command::new("true").run_checked().is_ok());
    }

    #[test]
    fn output_checked_returns_a_failure_as_output() {
        let output = Command::new("sh").args(["-c", "exit 2"]).output_checked().unwrap();
        assert_eq!(output.status.code(), Some(2));
    }

    #[test]
    fn a_missing_program_is_named_with_its_package_where_it_is_known() {
        let error = Command::new("lunchd-test-no-such-program").run_checked().unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot run `lunchd-test-no-such-program`: "),
            "{error}"
        );
        let error = Command::new("lunchd-test-no-such-program")
            .arg("x")
            .read_checked()
            .unwrap_err();
        assert!(matches!(error, CmdError::Spawn { package: None, .. }));
        // A tool of the suite that is not found is named with its package.
        let error = spawn_error(&Command::new("wrk"), io::ErrorKind::NotFound.into());
        assert_eq!(
            error.to_string(),
            "`wrk` not found: install the Debian package `wrk` (cargo xtask test installs it)"
        );
    }

    #[test]
    fn command_lines_quote_what_a_shell_would_split() {
        let mut command = Command::new("curl");
        command.args(["-sk", "a b", "", "it's", "--max-time=5"]);
        assert_eq!(command_line(&command), r"curl -sk 'a b' '' 'it'\''s' --max-time=5");
    }
}
