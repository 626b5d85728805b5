//! Deaths of the target's processes from the exit ring buffer: what killed each one, and who sent the signal.
use leak_common::{ExitEvent, COMM_LEN};

use crate::report::Exit;

/// The most deaths report.json lists; the rest are counted (`collection.exits_unrecorded`).
pub const MAX_EXITS: usize = 1000;

/// A death as the kernel side reported it; `start_ktime_ns`: the window's start on the same clock.
pub fn decode(bytes: &[u8], start_ktime_ns: u64) -> Option<Exit> {
    if bytes.len() < std::mem::size_of::<ExitEvent>() {
        return None;
    }
    // SAFETY: length checked; ExitEvent is plain integers, and the ring buffer gives no alignment promise.
    let ev: ExitEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let killed_by = (ev.exit_code & 0x7f) as i32;
    // The sending seen last names the sender only when it is the signal the process died of.
    let sent = killed_by != 0 && ev.signal as i32 == killed_by;
    let cause = if ev.oom_victim != 0 {
        "oom-kill"
    } else if killed_by != 0 {
        "signal"
    } else {
        "exit"
    };
    Some(Exit {
        t: ev.ktime_ns.saturating_sub(start_ktime_ns) as f64 / 1e9,
        pid: ev.pid,
        comm: comm(&ev.comm),
        cause: cause.into(),
        signal: (killed_by != 0).then_some(killed_by),
        sender_pid: sent.then_some(ev.sender_pid),
        sender_comm: sent.then(|| comm(&ev.sender_comm)),
        exit_code: Some(if killed_by != 0 { 128 + killed_by } else { (ev.exit_code >> 8 & 0xff) as i32 }),
        sender_outside: sent.then_some(ev.sender_in_target == 0),
        lived_seconds: (ev.start_ns != 0).then(|| ev.ktime_ns.saturating_sub(ev.start_ns) as f64 / 1e9),
        core_dumped: ev.exit_code & 0x80 != 0,
    })
}

/// Deaths whose victim the OOM killer had chosen, though the exit came before the kill's own event was read.
pub fn mark_oom_kills(exits: &mut [Exit], victims: &[(f64, u32)]) {
    for e in exits.iter_mut().filter(|e| e.cause == "signal" && e.signal == Some(9)) {
        if victims.iter().any(|&(t, pid)| pid == e.pid && (e.t - t).abs() < 30.0) {
            e.cause = "oom-kill".into();
        }
    }
}

fn comm(raw: &[u8; COMM_LEN]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(exit_code: u32, signal: u32, oom: u32) -> Vec<u8> {
        let mut ev = ExitEvent {
            ktime_ns: 5_000_000_000,
            start_ns: 2_000_000_000,
            pid: 100,
            exit_code,
            signal,
            sender_pid: 7,
            sender_in_target: 0,
            oom_victim: oom,
            ..Default::default()
        };
        ev.comm[..4].copy_from_slice(b"serv");
        ev.sender_comm[..4].copy_from_slice(b"supe");
        let mut out = vec![0u8; std::mem::size_of::<ExitEvent>()];
        // SAFETY: out has exactly the size of the plain-integer struct.
        unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast(), ev) };
        out
    }

    #[test]
    fn a_kill_names_its_sender() {
        let e = decode(&event(9, 9, 0), 1_000_000_000).unwrap();
        assert_eq!((e.cause.as_str(), e.signal, e.exit_code), ("signal", Some(9), Some(137)));
        assert_eq!((e.sender_pid, e.sender_comm.as_deref(), e.sender_outside), (Some(7), Some("supe"), Some(true)));
        assert_eq!((e.t, e.lived_seconds, e.comm.as_str()), (4.0, Some(3.0), "serv"));
    }

    #[test]
    fn crashes_exits_and_oom_kills() {
        let segv = decode(&event(11 | 0x80, 11, 0), 0).unwrap();
        assert_eq!((segv.signal, segv.core_dumped, segv.exit_code), (Some(11), true, Some(139)));
        let exit = decode(&event(3 << 8, 15, 0), 0).unwrap();
        assert_eq!((exit.cause.as_str(), exit.signal, exit.exit_code), ("exit", None, Some(3)));
        assert_eq!(exit.sender_pid, None, "a SIGTERM it handled is not what ended it");
        assert_eq!(decode(&event(9, 9, 1), 0).unwrap().cause, "oom-kill");
        let mut late = vec![decode(&event(9, 9, 0), 0).unwrap()];
        mark_oom_kills(&mut late, &[(4.9, 100)]);
        assert_eq!(late[0].cause, "oom-kill");
        assert!(decode(&[0; 8], 0).is_none());
    }
}
