//! `cowvol-backup`: the helper `cowvol backup` runs (backups to a directory
//! or an S3 bucket, from `cowvol-backup`). It takes the command's own
//! command line: `cowvol-backup --store DIR backup list --target URL`.

mod backup;

use cowvol_cli::cli::error::{CliError, CliResult};
use cowvol_cli::cli::{Command, Ctx};

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cowvol_cli::cli::main_with(run))
}

fn run(ctx: &Ctx, cmd: Command) -> CliResult {
    match cmd {
        Command::Backup(b) => backup::run(ctx, b),
        _ => Err(CliError::usage("cowvol-backup runs `cowvol backup` only; run other commands with cowvol")),
    }
}
