use std::collections::HashMap;

use super::*;

#[test]
fn descriptors_read_as_java_writes_parameters() {
    assert_eq!(parameters("(ZI)V"), ["boolean", "int"]);
    assert_eq!(
        parameters("([BLjava/lang/String;[[Ljava/util/List;J)V"),
        ["byte[]", "String", "java.util.List[][]", "long"]
    );
    assert!(parameters("()V").is_empty());
    let f = frame("com/acme/Sessions", "remember", "(ZI)V", 20);
    assert_eq!(f.symbol.as_deref(), Some("com.acme.Sessions.remember(boolean, int)"));
    assert_eq!((f.line, f.module.as_deref(), f.unwind.as_deref()), (Some(20), Some(JAVA_MODULE), Some("profile")));
    assert_ne!(f.address, frame("com/acme/Sessions", "serve", "(ZI)V", 30).address);
}

/// Two dumps of one recording of SessionBuffers (OpenJDK 17.0.15), 3 s apart: the second holds both the first's
/// 74 samples and its own 219.
fn recording() -> Dump {
    use std::io::Read;
    let gz = include_bytes!("testdata/two-dumps.jfr.gz");
    let mut jfr = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut jfr).unwrap();
    read_dump(std::io::Cursor::new(jfr)).unwrap()
}

#[test]
fn a_dump_gives_the_samplers_last_objects_by_stack_sharing_the_heap_after_gc() {
    let dump = recording();
    assert_eq!(dump.samples.len(), 219, "only the last emission");
    assert_eq!(dump.heap_used, Some(126538240), "the newest heap summary after a collection");
    let records = dump.records(dump.heap_used);
    let total: f64 = records.iter().map(|r| r.bytes).sum();
    assert!((total - 126538240.0).abs() < 1.0, "{total}");
    let top = records.iter().max_by(|a, b| a.bytes.total_cmp(&b.bytes)).unwrap();
    let labels: Vec<&str> = top.frames.iter().map(|f| f.label()).collect();
    assert_eq!(
        labels[..3],
        [
            "SessionBuffers.rememberSession(boolean, int)",
            "SessionBuffers.handleRequest(boolean, int)",
            "SessionBuffers.main(String[])"
        ]
    );
    assert_eq!((top.frames[0].line, top.frames[1].line), (Some(20), Some(30)));
    assert!(top.bytes > 0.7 * total, "{} of {total}", top.bytes);
    assert_eq!(records.iter().map(|r| r.objects).sum::<f64>(), 219.0, "objects are the samples");
}

#[test]
fn without_a_collection_the_newest_samples_view_of_the_heap_is_shared() {
    let mut dump = recording();
    dump.heap_used = None;
    let max = dump.samples.iter().map(|s| s.last_known_heap_usage).max().unwrap() as f64;
    let total: f64 = dump.records(None).iter().map(|r| r.bytes).sum();
    assert!((total - max).abs() < 1.0);
    assert!(Dump::default().records(None).is_empty());
}

#[test]
fn sites_are_named_by_the_application_method_not_the_jdks() {
    let mut heap = JvmHeap::start().unwrap();
    heap.profiles.insert(std::process::id(), recording().records(Some(100 << 20)));
    let comms = HashMap::from([(std::process::id(), "java".to_string())]);
    let sites = heap.sites(&comms, None);
    let top = sites.iter().max_by_key(|s| s.outstanding_bytes).unwrap();
    assert_eq!(top.label.as_deref(), Some("SessionBuffers.rememberSession(boolean, int)"));
    assert_eq!(crate::verdict::runtime::runtime(sites.iter()), Some(crate::stacks::runtime::Runtime::Jvm));
    let jdk = frame("java/util/ArrayList", "grow", "(I)[Ljava/lang/Object;", 237);
    assert!(crate::stacks::runtime::is_internal(&jdk));
    assert!(!crate::stacks::runtime::is_internal(&top.frames[0]));
    assert!(heap.stop(Vec::new()).is_empty(), "no process was offered");
}
