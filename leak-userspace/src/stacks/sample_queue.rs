//! The user stack sample ring buffer, emptied by a thread of its own into a queue the event loop takes from. A
//! stall of the loop (symbolizing a large object the first time, a scrape building fifty reports) would otherwise
//! fill the kernel's ring, and a sample the ring has no room for is lost for good. The queue is bounded: past
//! `QUEUE_BYTES` the samples wait in the ring again, where an overflow is counted by the kernel side.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{anyhow, Result};
use aya::maps::{MapData, RingBuf};

/// Sample bytes queued at most: stalls of a fraction of a second at tens of MB/s. What the loop cannot keep up
/// with for longer (a CPU it barely gets) would only grow the tracer's memory.
const QUEUE_BYTES: usize = 16 << 20;
/// The kernel side wakes a reader only once the ring is a quarter full: below that, it is read this often while
/// samples come, and ever less often (down to `IDLE_POLL_MS`) while none do: an idle tracer stays asleep.
const POLL_MS: i32 = 10;
const IDLE_POLL_MS: i32 = 80;
/// How long a take waits for the thread's flush before it gives up on it (the thread died).
const FLUSH_WAIT: Duration = Duration::from_secs(5);

enum Message {
    Samples(Vec<Vec<u8>>),
    /// Everything the ring held when the flush was asked for has been sent.
    Flushed,
}

pub struct SampleQueue {
    samples: mpsc::Receiver<Message>,
    queued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Written here to have the thread flush (or stop) now.
    wake: Arc<OwnedFd>,
    /// Written by the thread when it queued samples: the event loop waits on it.
    ready: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl SampleQueue {
    pub fn start(ring: RingBuf<MapData>) -> Result<Self> {
        let (wake, ready) = (Arc::new(eventfd()?), eventfd()?);
        let (tx, samples) = mpsc::channel();
        let (queued, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let reader = Reader { ring, tx, wake: wake.clone(), ready: ready.try_clone()?, queued: queued.clone() };
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("user-stacks".into())
            .spawn(move || reader.run(&flag))
            .map_err(|e| anyhow!("cannot start the user stack reader: {e}"))?;
        Ok(SampleQueue { samples, queued, stop, wake, ready, thread: Some(thread) })
    }

    /// The fd that becomes readable when samples are queued.
    pub fn fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    /// Hands every sample sent so far to `add`, in order: those in the ring as well, as whoever reads the
    /// kernel's site map next must find every sample sent before the read.
    pub fn take(&self, mut add: impl FnMut(&[u8])) {
        read_eventfd(&self.ready);
        write_eventfd(&self.wake);
        while let Ok(message) = self.samples.recv_timeout(FLUSH_WAIT) {
            let Message::Samples(batch) = message else { break };
            let bytes = batch.iter().map(Vec::len).sum();
            for sample in &batch {
                add(sample);
            }
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

impl Drop for SampleQueue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        write_eventfd(&self.wake);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Reader {
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Message>,
    wake: Arc<OwnedFd>,
    ready: OwnedFd,
    queued: Arc<AtomicUsize>,
}

impl Reader {
    fn run(mut self, stop: &AtomicBool) {
        let mut wait = POLL_MS;
        while !stop.load(Ordering::Acquire) {
            // A full queue leaves the ring unwatched (it is readable as long as it holds data).
            let full = self.queued.load(Ordering::Relaxed) >= QUEUE_BYTES;
            let ring = if full { -1 } else { self.ring.as_raw_fd() };
            let mut fds = [
                libc::pollfd { fd: ring, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: two valid pollfd entries; an fd of -1 is ignored.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, wait) };
            let flush = read_eventfd(&self.wake);
            let mut batch = Vec::new();
            let mut bytes = 0;
            if flush || !full {
                while let Some(item) = self.ring.next() {
                    bytes += item.len();
                    batch.push(item.to_vec());
                }
            }
            wait = if batch.is_empty() { (wait * 2).min(IDLE_POLL_MS) } else { POLL_MS };
            if !batch.is_empty() {
                self.queued.fetch_add(bytes, Ordering::Relaxed);
                if self.tx.send(Message::Samples(batch)).is_err() {
                    return;
                }
                write_eventfd(&self.ready);
            }
            if flush && self.tx.send(Message::Flushed).is_err() {
                return;
            }
        }
    }
}

fn eventfd() -> Result<OwnedFd> {
    // SAFETY: plain syscall; the fd it returns is ours alone.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(anyhow!("cannot make an eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resets the eventfd; says whether it had been written.
fn read_eventfd(fd: &OwnedFd) -> bool {
    let mut n = 0u64;
    // SAFETY: reads 8 bytes into n from a non-blocking eventfd.
    unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) == 8 }
}

fn write_eventfd(fd: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from one to an eventfd; a full counter (never, at 2^64 - 2) only fails the write.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}
