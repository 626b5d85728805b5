//! Batched reads and deletes of a per-CPU hash map (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`, Linux 5.6),
//! which aya does not offer. The site map of an agent on a busy node holds tens of thousands of sampled
//! allocations; read one `get_next_key` and one lookup at a time, it took most of the agent's CPU (two system calls
//! an entry, every interval). A batch is one call for thousands.
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries asked for in one lookup call.
const BATCH: usize = 4096;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn sys_bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix; the buffers it points to outlive the call and are
    // as large as its count says.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, size_of::<BatchAttr>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A kernel without batch operations for this map refuses the command itself.
fn unsupported(e: &io::Error) -> bool {
    const ENOTSUPP: i32 = 524;
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
}

/// A per-CPU value's stride in the kernel's buffers: each CPU's value is rounded up to 8 bytes.
fn value_stride<V>() -> usize {
    size_of::<V>().next_multiple_of(8)
}

/// Every entry of the per-CPU hash map `fd` (keys `K`, values `V` on each of `cpus` possible CPUs), summed over
/// the CPUs by `sum`. `None` when this kernel has no batch lookup.
pub fn lookup_all<K: Pod, V: Pod, S>(
    fd: BorrowedFd,
    cpus: usize,
    mut sum: impl FnMut(&[V]) -> S,
) -> io::Result<Option<Vec<(K, S)>>> {
    let mut out = Vec::new();
    let mut batch = BATCH;
    let (mut in_batch, mut out_batch) = (0u64, 0u64);
    let mut first = true;
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    loop {
        keys.resize(batch * size_of::<K>(), 0u8);
        values.resize(batch * cpus * value_stride::<V>(), 0u8);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &in_batch as *const u64 as u64 },
            out_batch: &mut out_batch as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let done = match sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more entries than the batch: ask for more at once.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && batch < 1 << 20 => {
                batch *= 4;
                continue;
            }
            Err(e) if first && unsupported(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut per_cpu: Vec<V> = Vec::with_capacity(cpus);
        for i in 0..(attr.count as usize).min(batch) {
            // SAFETY: K and V are plain data (Pod); the offsets lie within the buffers the kernel filled.
            let key: K = unsafe { std::ptr::read_unaligned(keys.as_ptr().add(i * size_of::<K>()).cast()) };
            per_cpu.clear();
            per_cpu.extend((0..cpus).map(|cpu| {
                let at = (i * cpus + cpu) * value_stride::<V>();
                unsafe { std::ptr::read_unaligned(values.as_ptr().add(at).cast::<V>()) }
            }));
            out.push((key, sum(&per_cpu)));
        }
        if done {
            return Ok(Some(out));
        }
        in_batch = out_batch;
        first = false;
    }
}

/// Deletes `keys` from the hash map `fd`; keys already gone are skipped. `false` when this kernel has no batch
/// delete (nothing was deleted).
pub fn delete_all<K: Pod>(fd: BorrowedFd, keys: &[K]) -> io::Result<bool> {
    let mut rest = keys;
    let mut first = true;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len().min(u32::MAX as usize) as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        // The kernel stops at a key it cannot delete, having deleted `count` before it.
        let deleted = (attr.count as usize).min(rest.len());
        match result {
            Ok(()) => rest = &[],
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[(deleted + 1).min(rest.len())..],
            Err(e) if first && deleted == 0 && unsupported(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
        first = false;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_values_are_laid_out_in_eight_byte_strides() {
        assert_eq!(value_stride::<u64>(), 8);
        assert_eq!(value_stride::<[u32; 3]>(), 16);
        assert_eq!(value_stride::<leak_common::SiteCounters>() % 8, 0);
        assert_eq!(size_of::<BatchAttr>(), 56, "the kernel's bpf_attr.batch");
    }
}
