//! The `cowvol` command: manage a store of copy-on-write volumes from the
//! shell. Run `cowvol demo` for a tour, `cowvol --help` for the commands;
//! docs/cli.md describes every command, the JSON shapes and the exit codes.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cowvol_cli::cli::main())
}
