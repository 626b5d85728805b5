use std::io::Read;

use super::*;
use crate::report::tests::{frame, sample_report, site};

fn decoded(bytes: &[u8]) -> Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut raw).unwrap();
    Profile::decode(raw.as_slice()).unwrap()
}

fn s(p: &Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

/// Function names of a sample's locations, leaf first, inlined functions innermost first.
fn names(p: &Profile, sample: &proto::Sample) -> Vec<String> {
    sample
        .location_id
        .iter()
        .flat_map(|id| &p.location[*id as usize - 1].line)
        .map(|l| s(p, p.function[l.function_id as usize - 1].name).to_string())
        .collect()
}

#[test]
fn heap_sample_types_values_and_totals() {
    let report = sample_report();
    let p = decoded(&encode(&profile(&report, |_, _| None)));
    let types: Vec<(&str, &str)> = p.sample_type.iter().map(|t| (s(&p, t.r#type), s(&p, t.unit))).collect();
    assert_eq!(types, SAMPLE_TYPES);
    assert_eq!(s(&p, p.default_sample_type), "inuse_space");
    assert_eq!(p.string_table[0], "");
    assert_eq!(p.sample.len(), report.sites.len());
    let inuse: i64 = p.sample.iter().map(|x| x.value[3]).sum();
    assert_eq!(inuse, report.sites.iter().map(|x| x.outstanding_bytes).sum::<i64>());
    let first = &report.sites[0];
    assert_eq!(
        p.sample[0].value,
        [first.alloc_count as i64, first.alloc_bytes as i64, first.outstanding_allocs, first.outstanding_bytes]
    );
    assert_eq!(names(&p, &p.sample[0]), ["clear_page_erms", "malloc", "grow_cache", "main"]);
    assert_eq!(p.duration_nanos, 10_000_000_000);
    assert_eq!(p.time_nanos, 1_735_689_600_000_000_000, "2025-01-01T00:00:00Z");
    assert!(s(&p, p.comment[0]).contains("docker container leaky"));
}

#[test]
fn labels_name_kind_cache_pid_comm_cgroup() {
    let p = profile(&sample_report(), |_, _| None);
    let labels = |i: usize| -> Vec<(String, String)> {
        p.sample[i]
            .label
            .iter()
            .map(|l| (s(&p, l.key).to_string(), if l.str != 0 { s(&p, l.str).to_string() } else { l.num.to_string() }))
            .collect()
    };
    let slab = labels(1);
    for want in [("kind", "slab"), ("slab_cache", "kmalloc-256"), ("pid", "42"), ("comm", "leaker")] {
        assert!(slab.contains(&(want.0.into(), want.1.into())), "{want:?} not in {slab:?}");
    }
    assert!(slab.contains(&("cgroup".into(), "docker container leaky".into())));
    assert!(!labels(0).iter().any(|(k, _)| k == "slab_cache"), "anon sites have no cache");
}

#[test]
fn kernel_frames_get_kernel_mappings_with_build_ids() {
    let report = sample_report();
    let p = profile(&report, |m, pids| match (m.kernel, pids) {
        (true, _) => Some("cafe".into()),
        (false, [42]) => Some("beef".into()),
        _ => None,
    });
    let files: Vec<(&str, &str)> = p.mapping.iter().map(|m| (s(&p, m.filename), s(&p, m.build_id))).collect();
    assert_eq!(files, [("app", "beef"), ("[kernel.kallsyms]", "cafe")], "the main binary first");
    let mut unnamed_root = report.clone();
    unnamed_root.sites[0].frames.push(Frame { module: None, ..frame(None, 0x10, false) });
    let p2 = profile(&unnamed_root, |_, _| None);
    assert_eq!(s(&p2, p2.mapping[0].filename), "app", "a named object is the main binary, not [unknown]");
    let kernel = &p.mapping[1];
    assert_eq!((kernel.memory_start, kernel.memory_limit), (0xffff_ffff_8100_0000, 0xffff_ffff_8200_0001));
    let leaf = &p.location[p.sample[0].location_id[0] as usize - 1];
    assert_eq!(leaf.mapping_id, kernel.id);
    assert_eq!(leaf.address, 0xffff_ffff_8100_0000);
}

#[test]
fn inlined_frames_share_a_location_recursion_does_not() {
    let mut report = sample_report();
    let inlined = |name: &str, line| Frame { line: Some(line), ..frame(Some(name), 0x5000, false) };
    report.sites = vec![site(
        "anon",
        4096,
        vec![
            inlined("push_entry", 10),
            inlined("grow_table", 20),
            inlined("rehash", 30),
            frame(Some("walk"), 0x6000, false),
            frame(Some("walk"), 0x6000, false),
            frame(None, 0x7000, false),
        ],
    )];
    let p = profile(&report, |_, _| None);
    let sample = &p.sample[0];
    assert_eq!(sample.location_id.len(), 4, "one inlined location, two recursive walks, one unknown");
    let first = &p.location[sample.location_id[0] as usize - 1];
    assert_eq!(first.line.iter().map(|l| l.line).collect::<Vec<_>>(), [10, 20, 30]);
    assert_eq!(sample.location_id[1], sample.location_id[2], "the same frame is the same location");
    let unknown = &p.location[sample.location_id[3] as usize - 1];
    assert!(unknown.line.is_empty());
    assert_eq!(unknown.address, 0x7000);
    assert!(p.mapping[0].has_inline_frames);
}

#[test]
fn empty_report_is_a_valid_profile() {
    let mut report = sample_report();
    report.sites.clear();
    let p = decoded(&encode(&profile(&report, |_, _| None)));
    assert!(p.sample.is_empty() && p.location.is_empty() && p.mapping.is_empty());
    assert_eq!(p.sample_type.len(), 4);
}

#[test]
fn written_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    write_pprof(dir.path(), &sample_report()).unwrap();
    let path = dir.path().join("profile.pb.gz");
    assert_eq!(decoded(&std::fs::read(&path).unwrap()).sample.len(), 2);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}
