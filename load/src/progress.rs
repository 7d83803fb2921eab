//! Progress on stderr: an `indicatif` bar when stderr is a terminal, one
//! plain line per second otherwise (CI logs, pipes), or nothing.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    Bar,
    Plain,
    None,
}

/// A running progress display over a shared counter; stops on drop.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Shows `counter` against `total` under `label` until dropped.
    pub fn start(mode: Mode, label: &str, total: u64, counter: Arc<AtomicU64>) -> Progress {
        let mode = match mode {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Bar,
            Mode::Auto => Mode::Plain,
            m => m,
        };
        match mode {
            Mode::Bar => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{prefix:>22} [{bar:40}] {pos}/{len} {per_sec} {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(label.to_string());
                let shown = bar.clone();
                let task = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    loop {
                        tick.tick().await;
                        shown.set_position(counter.load(Ordering::Relaxed));
                    }
                });
                Progress {
                    task: Some(task),
                    bar: Some(bar),
                }
            }
            Mode::Plain => {
                let label = label.to_string();
                let task = tokio::spawn(async move {
                    let started = Instant::now();
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let done = counter.load(Ordering::Relaxed);
                        eprintln!(
                            "{label}: {done}/{total} ({:.0}%) after {:.0} s",
                            if total > 0 {
                                done as f64 * 100.0 / total as f64
                            } else {
                                0.0
                            },
                            started.elapsed().as_secs_f64()
                        );
                    }
                });
                Progress {
                    task: Some(task),
                    bar: None,
                }
            }
            Mode::Auto | Mode::None => Progress {
                task: None,
                bar: None,
            },
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
