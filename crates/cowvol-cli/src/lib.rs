//! The code of the `cowvol` command, as a library its three programs share:
//! `cowvol` itself, and the helpers `cowvol-serve` and `cowvol-backup`,
//! which it runs for `cowvol serve` and `cowvol backup` so that its own
//! start does not pay for the HTTP server and the S3 client
//! (docs/cli.md, "Programs").

mod bench_run;
pub mod cli;
