//! `cowvol serve`: the platform HTTP API and panel, from `cowvol-server`.

use super::args::ServeArgs;
use super::error::{code, CliError, CliResult};
use super::Ctx;

/// Runs the server until SIGINT or SIGTERM.
pub fn run(ctx: &Ctx, a: ServeArgs) -> CliResult {
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
