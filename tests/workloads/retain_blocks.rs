//! A heap leak in Rust: every request's block is retained in a long-lived Vec that is never drained. The block is a
//! `vec![..; 256 KiB]` (allocated through the global allocator and filled, inlined into retain_block). Built with
//! `rustc -O -g`: release optimizations, no frame pointers. Frames are demangled Rust paths
//! (`retain_blocks::retain_block`).
//! retain_blocks [MiB per second = 8] [seconds = 8] [hold seconds = 60] (the conventions of common.h)
use std::{
    env,
    thread::sleep,
    time::{Duration, Instant},
};

const BLOCK: usize = 256 * 1024;

/// The leak: the block is kept for good.
#[inline(never)]
fn retain_block(retained: &mut Vec<Vec<u8>>, id: usize) {
    retained.push(vec![(id % 251) as u8 + 1; BLOCK]);
}

/// One request: its key is formatted (a transient String) and its block retained.
#[inline(never)]
fn handle_request(retained: &mut Vec<Vec<u8>>, id: usize) {
    let key = format!("request-{id}");
    std::hint::black_box(&key);
    retain_block(retained, id);
}

fn arg_or(i: usize, fallback: f64) -> f64 {
    env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(fallback)
}

fn main() {
    let (mib_per_sec, secs, hold) = (arg_or(1, 8.0), arg_or(2, 8.0), arg_or(3, 60.0));
    let per_sec = mib_per_sec * (1 << 20) as f64 / BLOCK as f64;
    let mut retained = Vec::new();
    let start = Instant::now();
    // Paced as common.h's paced(): the requests due by now, every 5 ms.
    while start.elapsed().as_secs_f64() < secs {
        let due = (start.elapsed().as_secs_f64() * per_sec) as usize + 1;
        while retained.len() < due {
            let id = retained.len();
            handle_request(&mut retained, id);
        }
        sleep(Duration::from_millis(5));
    }
    eprintln!("retain_blocks: retained {} MiB", retained.len() * BLOCK >> 20);
    let end = Instant::now() + Duration::from_secs_f64(hold.min(1e9));
    while Instant::now() < end {
        sleep(Duration::from_millis(100));
    }
    std::hint::black_box(&retained);
}
