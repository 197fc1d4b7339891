//! Progress bars for long work, drawn on stderr only when stdout is a
//! terminal and `--quiet` is not given.

use super::Ctx;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Duration;

/// A byte-counting bar with throughput and ETA (hidden when not wanted).
pub fn bytes(ctx: &Ctx, total: u64, what: &str) -> ProgressBar {
    bytes_when(ctx.progress, total, what)
}

/// [`bytes`], drawn when `show` is set: commands whose stdout carries a
/// stream decide from stderr instead.
pub fn bytes_when(show: bool, total: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg} [{wide_bar:.cyan/blue}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// A spinner with elapsed time, for work that reports no progress of its own.
pub fn spinner(ctx: &Ctx, what: &str) -> ProgressBar {
    if !ctx.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
