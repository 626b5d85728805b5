//! HotSpot's attach protocol, as `jcmd` and jattach speak it: a trigger file and SIGQUIT start a running JVM's
//! attach listener, then each request is one connection to its unix socket in the JVM's own /tmp (through
//! `/proc/<pid>/root`, so a containerised JVM is reached under its namespaced pid). `--jvm-perfmap` asks for perf
//! maps through it, `--jvm-heap` for flight recordings.
use std::{
    collections::HashSet,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::stacks::perfmap::innermost_nspid;

/// How long a JVM may take to start its attach listener after SIGQUIT (jattach waits about as long).
const LISTENER_WAIT: Duration = Duration::from_secs(5);
/// How long one request may take, connecting to the last byte of the answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// A HotSpot JVM: its process maps libjvm.
pub fn is_jvm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|maps| maps.lines().any(|l| l.ends_with("/libjvm.so")))
}

/// The JVM `pid` as seen from inside its own namespaces: its pid there and its /tmp seen from here.
pub struct Jvm {
    pub pid: u32,
    pub nspid: u32,
    /// Its /tmp, through its root.
    pub tmp: PathBuf,
}

impl Jvm {
    pub fn new(pid: u32) -> Result<Jvm> {
        let nspid = innermost_nspid(&status(pid)?).unwrap_or(pid);
        Ok(Jvm { pid, nspid, tmp: PathBuf::from(format!("/proc/{pid}/root/tmp")) })
    }

    /// Runs one diagnostic command (`Compiler.perfmap`, `JFR.start name=x`) and returns its output. A JVM whose
    /// listener is not running is signalled for it at most once (`signalled` remembers whom).
    pub fn jcmd(&self, command: &str, signalled: &mut HashSet<u32>) -> Result<String> {
        let socket = self.tmp.join(format!(".java_pid{}", self.nspid));
        if !socket.exists() {
            self.start_listener(&socket, signalled)?;
        }
        let mut stream = UnixStream::connect(&socket)
            .with_context(|| format!("cannot connect to its attach listener {}", socket.display()))?;
        stream.set_read_timeout(Some(ANSWER_WAIT))?;
        stream.set_write_timeout(Some(ANSWER_WAIT))?;
        // Protocol version 1, the command, and always three arguments.
        let request = format!("1\0jcmd\0{command}\0\0\0");
        stream.write_all(request.as_bytes()).context("cannot send the request")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).context("no answer in time")?;
        let (code, output) = answer.split_once('\n').unwrap_or((&answer, ""));
        let output = output.trim();
        let verb = command.split(' ').next().unwrap_or(command);
        if code.trim() != "0" || output.contains("Exception") || output.contains("Unknown diagnostic command") {
            bail!("the JVM refused {verb}: {}", first_line(output, code));
        }
        Ok(output.to_string())
    }

    /// Starts the JVM's attach listener: it looks for `.attach_pid<nspid>` in its working directory or /tmp when
    /// it gets SIGQUIT. Only a JVM that handles SIGQUIT is sent one: under `-Xrs` the signal would kill it.
    fn start_listener(&self, socket: &Path, signalled: &mut HashSet<u32>) -> Result<()> {
        if !catches_sigquit(&status(self.pid)?) {
            bail!("not asked: the JVM does not handle SIGQUIT (-Xrs?), which would kill it");
        }
        if !signalled.insert(self.pid) {
            bail!("its attach listener did not start when signalled once; not signalled again");
        }
        let trigger = self.tmp.join(format!(".attach_pid{}", self.nspid));
        std::fs::write(&trigger, b"").with_context(|| format!("cannot create {}", trigger.display()))?;
        // SAFETY: kill(2) with a pid and a signal; no memory is shared.
        let sent = unsafe { libc::kill(self.pid as i32, libc::SIGQUIT) } == 0;
        let deadline = Instant::now() + LISTENER_WAIT;
        while sent && !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&trigger);
        if !sent {
            bail!("cannot signal it: {}", std::io::Error::last_os_error());
        }
        if !socket.exists() {
            bail!(
                "its attach listener did not start within {} s (-XX:+DisableAttachMechanism?)",
                LISTENER_WAIT.as_secs()
            );
        }
        Ok(())
    }
}

fn status(pid: u32) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).context("the process is gone")
}

/// Whether `SigCgt` in /proc/<pid>/status has SIGQUIT's bit.
fn catches_sigquit(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGQUIT - 1)) != 0)
}

fn first_line<'a>(output: &'a str, code: &'a str) -> &'a str {
    output.lines().next().filter(|l| !l.is_empty()).unwrap_or(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigquit_is_caught_only_when_its_bit_is_set() {
        assert!(catches_sigquit("Name:\tjava\nSigCgt:\t0000000181005ccf\n"));
        assert!(!catches_sigquit("Name:\tjava\nSigCgt:\t0000000181005ccb\n"));
        assert!(!catches_sigquit("Name:\tjava\n"));
    }
}
