//! CLI errors: one line on stderr and a distinct exit code per kind.

use std::fmt;
use std::io;

/// Process exit codes.
pub mod code {
    /// Success.
    pub const OK: u8 = 0;
    /// Any other failure; also problems found by `check` or `scrub`.
    pub const FAILURE: u8 = 1;
    /// Bad usage: unknown command or option, malformed or out-of-range argument.
    pub const USAGE: u8 = 2;
    /// A volume, snapshot, store or file does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// Busy, locked by another process, or timed out; nothing was changed.
    pub const BUSY: u8 = 4;
    /// Stored data or metadata failed verification.
    pub const CORRUPTION: u8 = 5;
    /// The file system is full.
    pub const NO_SPACE: u8 = 6;
    /// The snapshot is held, so it was not deleted.
    pub const HELD: u8 = 7;
}

/// A failure the CLI reports: what failed, why, and what to do about it.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: u8,
    /// What failed and why, e.g. `creating volume "db": volume "db" already exists`.
    pub message: String,
    /// What to do next, when there is something useful to say.
    pub hint: Option<String>,
    /// Writing to stdout failed because the reader went away: exit quietly.
    pub broken_pipe: bool,
    /// The store is locked by another process (which may take the command
    /// over its control socket).
    pub locked: bool,
}

/// Result of a CLI command.
pub type CliResult<T = ()> = Result<T, CliError>;

impl CliError {
    /// A failure with an explicit exit code.
    pub fn new(code: u8, message: impl Into<String>) -> CliError {
        CliError { code, message: message.into(), hint: None, broken_pipe: false, locked: false }
    }

    /// Bad usage (exit 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(code::USAGE, message)
    }

    /// Not found (exit 3).
    pub fn not_found(message: impl Into<String>) -> CliError {
        CliError::new(code::NOT_FOUND, message)
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> CliError {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// From a library error, with what the CLI was doing.
    pub fn from_lib(what: impl fmt::Display, e: cowvol::Error) -> CliError {
        use cowvol::Error as E;
        let (code, hint) = match &e {
            E::NotFound { .. } => (code::NOT_FOUND, None),
            E::AlreadyExists { .. } => (code::FAILURE, Some("choose another name, or delete the existing one first")),
            E::Busy { .. } => (code::BUSY, Some("another operation holds it; retry when it finishes")),
            E::Held { .. } => (code::HELD, Some("`cowvol snapshot release VOL SNAP` lifts the hold")),
            E::Timeout { .. } => (
                code::BUSY,
                Some("I/O on the volume kept it busy; retry, or pass a longer --timeout where the command has one"),
            ),
            E::Locked { .. } => (
                code::BUSY,
                Some("another cowvol process has the store open; wait for it to finish or use another --store"),
            ),
            E::OutOfRange { .. } => (code::USAGE, Some("`cowvol volume info VOL` shows the volume's size")),
            E::InvalidArgument(_) => (code::USAGE, None),
            E::ReadOnly { .. } => (code::FAILURE, Some("fork it (`cowvol volume fork`) to get a writable copy")),
            E::NoSpace { .. } => (code::NO_SPACE, Some("free space on the file system holding the store, then retry")),
            E::Corruption { .. } => {
                (code::CORRUPTION, Some("run `cowvol check` and `cowvol scrub` to see what is damaged"))
            }
            E::Poisoned { .. } => (code::FAILURE, Some("the next command reopens the store, which recovers it")),
            E::Stream { .. } => (
                code::CORRUPTION,
                Some("the stream is damaged or incomplete; send it again (`snapshot receive --resume` keeps what was acknowledged)"),
            ),
            E::BaseMismatch { .. } => {
                (code::FAILURE, Some("receive the base snapshot first, or send a full stream (without --from)"))
            }
            E::Io { .. } => (code::FAILURE, None),
            _ => (code::FAILURE, None),
        };
        let locked = matches!(e, E::Locked { .. });
        CliError { code, message: format!("{what}: {e}"), hint: hint.map(str::to_string), broken_pipe: false, locked }
    }

    /// From an operating system error on a file the CLI itself handles.
    pub fn from_io(what: impl fmt::Display, e: io::Error) -> CliError {
        let code = match e.kind() {
            io::ErrorKind::NotFound => code::NOT_FOUND,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => code::NO_SPACE,
            _ if e.raw_os_error() == Some(libc::ENOSPC) => code::NO_SPACE,
            _ => code::FAILURE,
        };
        CliError {
            code,
            message: format!("{what}: {}", strip_os_error(&e)),
            hint: None,
            broken_pipe: e.kind() == io::ErrorKind::BrokenPipe,
            locked: false,
        }
    }

    /// The single line printed on stderr.
    pub fn line(&self) -> String {
        match &self.hint {
            Some(h) => format!("cowvol: error: {}; hint: {h}", self.message),
            None => format!("cowvol: error: {}", self.message),
        }
    }
}

/// `No such file or directory (os error 2)` → `No such file or directory`.
fn strip_os_error(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// Writing to stdout: a closed pipe ends the command quietly.
pub fn out_err(e: io::Error) -> CliError {
    CliError::from_io("writing to stdout", e)
}

/// Adds what the CLI was doing to a library result.
pub trait LibContext<T> {
    /// Maps the error with [`CliError::from_lib`].
    fn ctx(self, what: impl fmt::Display) -> CliResult<T>;
}

impl<T> LibContext<T> for cowvol::Result<T> {
    fn ctx(self, what: impl fmt::Display) -> CliResult<T> {
        self.map_err(|e| CliError::from_lib(what, e))
    }
}

/// Adds what the CLI was doing to an I/O result.
pub trait IoContext<T> {
    /// Maps the error with [`CliError::from_io`].
    fn io_ctx(self, what: impl fmt::Display) -> CliResult<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn io_ctx(self, what: impl fmt::Display) -> CliResult<T> {
        self.map_err(|e| CliError::from_io(what, e))
    }
}
