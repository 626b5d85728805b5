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

use super::{sample_head, split_sample};

/// Sample bytes queued at most: stalls of a fraction of a second at tens of MB/s. What the loop cannot keep up
/// with for longer (a CPU it barely gets) would only grow the tracer's memory.
const QUEUE_BYTES: usize = 32 << 20;
/// The kernel side wakes a reader only once the ring is a quarter full: below that, it is read this often while
/// samples come, and ever less often (down to `IDLE_POLL_MS`) while none do: an idle tracer stays asleep.
const POLL_MS: i32 = 10;
const IDLE_POLL_MS: i32 = 80;
/// How long a take waits for the thread's flush before it gives up on it (the thread died).
const FLUSH_WAIT: Duration = Duration::from_secs(5);

enum Message {
    Samples(Batch),
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
            self.hand(&batch, &mut add);
        }
    }

    /// Hands `add` the samples the thread queued already, without asking it for the rest: when it says samples
    /// are ready, and between the parts of a long task (an agent's scrape assembles a report per container), so
    /// that the queue does not fill meanwhile. Under CPU contention a flush waits for the thread to be scheduled.
    pub fn take_queued(&self, mut add: impl FnMut(&[u8])) {
        // Reset first: a batch queued after the last receive sets it again, so no wakeup is lost.
        read_eventfd(&self.ready);
        while let Ok(message) = self.samples.try_recv() {
            if let Message::Samples(batch) = message {
                self.hand(&batch, &mut add);
            }
        }
    }

    /// Hands a batch's samples to `add`; they leave the queue's count.
    fn hand(&self, batch: &Batch, add: &mut impl FnMut(&[u8])) {
        batch.samples().for_each(add);
        self.queued.fetch_sub(batch.bytes.len(), Ordering::Relaxed);
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
            let mut batch = Batch::default();
            if flush || !full {
                while let Some(item) = self.ring.next() {
                    batch.push(&item);
                }
            }
            wait = if batch.is_empty() { (wait * 2).min(IDLE_POLL_MS) } else { POLL_MS };
            if !batch.is_empty() {
                self.queued.fetch_add(batch.bytes.len(), Ordering::Relaxed);
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

/// Samples taken off the ring together, one after another in one buffer.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// Stack bytes kept below the stack pointer: the red zone a leaf function may use. No unwinding rule reads there,
/// nor further down, where the kernel side's copy (whole chunks, from the stack pointer's chunk) begins.
const BELOW_SP: u64 = 128;

impl Batch {
    /// Queues a record of the ring, its stack copy from just below the stack pointer up: what lies further down
    /// (half a chunk on average) would only be copied twice more.
    fn push(&mut self, record: &[u8]) {
        match split_sample(record) {
            None => self.bytes.extend_from_slice(record),
            Some((mut sample, stack)) => {
                let skip = sample.sp.saturating_sub(BELOW_SP).saturating_sub(sample.base).min(stack.len() as u64);
                sample.base += skip;
                sample.len = (stack.len() as u64 - skip) as u32;
                self.bytes.extend_from_slice(sample_head(&sample));
                self.bytes.extend_from_slice(&stack[skip as usize..]);
            }
        }
        self.ends.push(self.bytes.len());
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn samples(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(start, &end)| &self.bytes[start..end])
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

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use leak_common::StackSample;

    use super::*;
    use crate::stacks::{tests::record, unwind, CopySizes, UserStacks};

    /// The queue drops the copy below the stack pointer's red zone: the walk finds the same frames, at the same
    /// depth, and a short record passes as it is.
    #[test]
    fn a_queued_sample_keeps_what_its_walk_reads() {
        let (sample, stack) = std::hint::black_box(unwind::tests::caller_of_the_leaf(5));
        let whole = record(&sample, &stack, 0);
        let mut batch = Batch::default();
        batch.push(&whole);
        batch.push(&[1, 2, 3]);
        let queued: Vec<&[u8]> = batch.samples().collect();
        assert_eq!(queued.len(), 2);
        assert_eq!(queued[1], [1, 2, 3]);
        let below = (sample.sp - sample.base).saturating_sub(BELOW_SP) as usize;
        assert_eq!(queued[0].len(), whole.len() - below, "the stack from just below its pointer up");

        let mut u = UserStacks::new(None, None, CopySizes::new(None, 4));
        u.add(&whole);
        let (mut trimmed, _) = split_sample(queued[0]).unwrap();
        assert_eq!((trimmed.base, trimmed.sp), (sample.sp - BELOW_SP, sample.sp));
        trimmed.token = 2;
        let mut again = queued[0].to_vec();
        again[..size_of::<StackSample>()].copy_from_slice(sample_head(&trimmed));
        u.add(&again);
        let s = u.stats([0; 5], [0; 2]);
        assert_eq!((s.samples, s.unwound), (2, 2));
        assert_eq!(u.tokens[&sample.token], u.tokens[&2], "the same frames");
        assert_eq!(s.depth_kib.values().sum::<u64>(), 2);
        assert_eq!(s.depth_kib.len(), 1, "the same depth: {:?}", s.depth_kib);
    }
}
