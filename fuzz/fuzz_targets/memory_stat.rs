//! memory.stat / memory.events / memory.oom_control text, as a cgroup (or a container that controls its files'
//! view) may present it: parsing and normalising never panic, and every value parsed is a value of the text.
#![no_main]
use leaktrace::{cgroup::CgroupVersion, memory};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let stat = memory::parse_stat(&text);
    for (key, value) in &stat {
        assert!(text.contains(key.as_str()) && text.contains(&value.to_string()));
    }
    for version in [CgroupVersion::V1, CgroupVersion::V2] {
        let _ = memory::normalise(version, &stat);
    }
});
