//! `cowvol serve` and `cowvol backup` run in helper programs, `cowvol-serve`
//! and `cowvol-backup`, so that `cowvol` links neither the HTTP server nor
//! the S3 client: their code and constructors would cost every other
//! command about a sixth of a millisecond at start, which is a sixth of
//! what `cowvol snapshot create` costs in all (docs/performance.md).

use super::error::{code, CliError, CliResult};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// Replaces this process with the helper `program`, given this process's
/// arguments. The helper parses the same command line, so its help, errors
/// and exit codes are the command's; it keeps the process id, so a signal
/// sent to `cowvol serve` reaches the server, and the standard streams.
/// Returns only when the helper could not be started.
pub fn run_instead(program: &str) -> CliResult {
    let Some(path) = find(program) else {
        let command = program.replacen('-', " ", 1);
        return Err(CliError::new(
            code::FAILURE,
            format!("`{command}` runs the program {program}, which is neither beside this one nor on PATH"),
        )
        .hint("it is built and installed with cowvol: `cargo install --path crates/cowvol-cli` installs all three programs"));
    };
    let err = std::process::Command::new(&path).args(std::env::args_os().skip(1)).exec();
    Err(CliError::from_io(format!("running {}", path.display()), err))
}

/// The helper beside this program (where cargo builds and installs it),
/// else the first one on PATH.
fn find(program: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join(program)));
    let path = std::env::var_os("PATH").unwrap_or_default();
    beside.into_iter().chain(std::env::split_paths(&path).map(|dir| dir.join(program))).find(|p| p.is_file())
}
