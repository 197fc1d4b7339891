//! `cowvol-serve`: the helper `cowvol serve` runs (the platform HTTP API and
//! the snapshot panel, from `cowvol-server`). It takes the command's own
//! command line: `cowvol-serve --store DIR serve --listen ADDR`.

use cowvol_cli::cli::args::ServeArgs;
use cowvol_cli::cli::error::{code, CliError, CliResult};
use cowvol_cli::cli::{Command, Ctx};

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cowvol_cli::cli::main_with(run))
}

fn run(ctx: &Ctx, cmd: Command) -> CliResult {
    match cmd {
        Command::Serve(a) => serve(ctx, a),
        _ => Err(CliError::usage("cowvol-serve runs `cowvol serve` only; run other commands with cowvol")),
    }
}

/// Runs the server until SIGINT or SIGTERM.
fn serve(ctx: &Ctx, a: ServeArgs) -> CliResult {
    let opts = cowvol_server::ServeOptions {
        store_dir: ctx.store_dir.clone(),
        tokens_file: a.tokens,
        config: cowvol_server::ServerConfig {
            listen: a.listen,
            default_volume_size: a.default_volume_size,
            ..Default::default()
        },
    };
    cowvol_server::serve(opts).map_err(|e| CliError::new(code::FAILURE, format!("serve: {e}")))
}
