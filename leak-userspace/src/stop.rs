//! SIGINT and SIGTERM end a session; they never kill it. From the moment a session starts they only record that
//! they arrived, so one received while attaching, tracing or writing still leads to outputs written from what was
//! collected (a tracer killed mid-write would lose the capture of an incident). SIGKILL still ends the process at
//! once, and then the kernel drops every program with its file descriptors.
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

pub struct StopSignals(Arc<AtomicUsize>);

impl StopSignals {
    /// Replaces the default (fatal) action of SIGINT and SIGTERM for the rest of the process's life.
    pub fn install() -> Result<Self> {
        let flag = Arc::new(AtomicUsize::new(0));
        for signal in [SIGINT, SIGTERM] {
            signal_hook::flag::register_usize(signal, flag.clone(), signal as usize)
                .with_context(|| format!("cannot handle signal {signal}"))?;
        }
        Ok(StopSignals(flag))
    }

    /// The name of the last stop signal received, if any.
    pub fn received(&self) -> Option<&'static str> {
        name(self.0.load(Ordering::SeqCst))
    }
}

fn name(signal: usize) -> Option<&'static str> {
    match signal as i32 {
        SIGINT => Some("SIGINT"),
        SIGTERM => Some("SIGTERM"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_signal_is_recorded_not_fatal() {
        let stop = StopSignals::install().unwrap();
        assert_eq!(stop.received(), None);
        // SAFETY: raising a signal whose action was just replaced by a flag store.
        unsafe { libc::raise(SIGTERM) };
        assert_eq!(stop.received(), Some("SIGTERM"));
        assert_eq!(name(0), None);
        assert_eq!(name(SIGINT as usize), Some("SIGINT"));
    }
}
