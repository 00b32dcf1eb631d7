//! Progress of long runs (bench, load, transfer) on stderr — drawn only
//! where a terminal is attached (indicatif hides a bar whose stderr is not
//! one, so pipes and CI logs stay quiet) and only once the work has lasted
//! a moment (short runs print nothing extra).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long work runs before its bar appears.
const SHOW_AFTER: Duration = Duration::from_secs(1);
/// How often a followed counter is read.
const TICK: Duration = Duration::from_millis(200);

/// A bar of `total` steps labelled `label` (module doc).
#[derive(Debug)]
pub struct Progress {
    pb: ProgressBar,
    follower: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Progress {
    /// A bar advanced with [`Progress::inc`].
    pub fn new(label: &str, total: u64) -> Progress {
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:20} [{bar:40}] {human_pos}/{human_len} {elapsed} (eta {eta})",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(label.to_string());
        Progress { pb, follower: None }
    }

    /// A bar that follows `done` (steps completed, added to by the work
    /// itself, e.g. [`ftvm_kvproto::load::LoadConfig::progress`]).
    pub fn follow(label: &str, total: u64, done: Arc<AtomicU64>) -> Progress {
        let mut p = Progress::new(label, total);
        let stop = Arc::new(AtomicBool::new(false));
        let (pb, s) = (p.pb.clone(), stop.clone());
        let follow = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                // Relaxed: a display value; the stop flag only ends the loop.
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    pb.set_position(done.load(Ordering::Relaxed));
                    show_once_it_lasts(&pb, SHOW_AFTER);
                }
            });
        // No thread, no bar: the work goes on.
        if let Ok(t) = follow {
            p.follower = Some((stop, t));
        }
        p
    }

    /// `n` more steps done.
    pub fn inc(&self, n: u64) {
        self.pb.inc(n);
        show_once_it_lasts(&self.pb, SHOW_AFTER);
    }

    /// Prints `line` above the bar (or plainly when it is hidden).
    pub fn println(&self, line: &str) {
        if self.pb.is_hidden() {
            eprintln!("{line}");
        } else {
            self.pb.println(line);
        }
    }

    /// Removes the bar.
    pub fn finish(self) {}
}

/// Draws `pb` on stderr once it has been running for `after` (a bar made
/// hidden; indicatif keeps it hidden where stderr is not a terminal).
pub(crate) fn show_once_it_lasts(pb: &ProgressBar, after: Duration) {
    if pb.elapsed() >= after && pb.is_hidden() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some((stop, t)) = self.follower.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
        self.pb.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a terminal (the test's stderr is captured) the bar stays
    /// hidden; the counts still advance and dropping it ends the follower.
    #[test]
    fn a_bar_without_a_terminal_stays_hidden_and_counts() {
        let done = Arc::new(AtomicU64::new(0));
        let p = Progress::follow("test", 10, done.clone());
        done.store(7, Ordering::Relaxed);
        std::thread::sleep(TICK * 3);
        assert_eq!(p.pb.position(), 7);
        assert!(p.pb.is_hidden());
        p.finish();
        let q = Progress::new("steps", 3);
        q.inc(1);
        q.inc(1);
        assert_eq!(q.pb.position(), 2);
        q.println("a line while hidden goes to stderr as it is");
        q.finish();
    }
}
