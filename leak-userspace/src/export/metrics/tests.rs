use std::collections::BTreeMap;

use super::*;
use crate::report::tests::{frame, sample_report, site};

/// Every series of an exposition: name and labels (as written) to value; checks the comment lines' form too.
fn series(text: &str) -> BTreeMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('#') {
            assert!(rest.starts_with(" HELP ") || rest.starts_with(" TYPE ") || rest == " EOF", "{line}");
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(out.insert(name.to_string(), value.parse().unwrap()).is_none(), "{name} twice");
    }
    out
}

fn target() -> Vec<(&'static str, String)> {
    target_labels(&sample_report())
}

#[test]
fn memory_verdict_deaths_and_sites_are_series_of_the_target() {
    let mut report = sample_report();
    report.sites[0].label = Some("grow_cache".into());
    report.verdict.class = "heap-leak".into();
    report.verdict.confidence = 0.9;
    report.verdict.location = Some("application-heap".into());
    let got = series(&render_trace(&report));
    let t = r#"cgroup="/sys/fs/cgroup/memory/leaky",container="leaky",container_id="abababababab",image="leaky:1",pod="",namespace="""#;
    assert_eq!(got[&format!("leaktrace_memory_bytes{{{t},category=\"anon\"}}")], (72 << 20) as f64);
    assert_eq!(got[&format!("leaktrace_memory_bytes{{{t},category=\"usage\"}}")], (80 << 20) as f64);
    assert!(!got.keys().any(|k| k.contains("category=\"slab\"")), "no slab figure, no series");
    assert_eq!(got[&format!("leaktrace_memory_limit_bytes{{{t}}}")], (128 << 20) as f64);
    let info = format!("leaktrace_verdict_info{{{t},class=\"heap-leak\",location=\"application-heap\",runtime=\"\"}}");
    assert_eq!(got[&info], 1.0);
    assert_eq!(got[&format!("leaktrace_verdict_confidence{{{t},class=\"heap-leak\"}}")], 0.9);
    assert_eq!(got[&format!("leaktrace_oom_kills_total{{{t}}}")], 1.0);
    assert_eq!(got[&format!("leaktrace_deaths_total{{{t},cause=\"oom-kill\"}}")], 1.0);
    let top = format!("leaktrace_site_outstanding_bytes{{{t},rank=\"1\",function=\"grow_cache\",kind=\"anon\"}}");
    assert_eq!(got[&top], (64 << 20) as f64);
    let slab =
        format!("leaktrace_site_outstanding_bytes{{{t},rank=\"2\",function=\"kmem_cache_alloc\",kind=\"slab\"}}");
    assert_eq!(got[&slab], 4096.0, "a kernel-only site is named by its leaf");
    assert_eq!(got[&format!("leaktrace_window_seconds{{{t}}}")], 10.0);
}

#[test]
fn growth_rates_are_per_second() {
    let mut report = sample_report();
    let trend = |name: &str, unit: &str, rate_per_hour: f64| crate::report::Trend {
        name: name.into(),
        unit: unit.into(),
        rate_per_hour,
        steadiness: 1.0,
        change: 0.0,
        first: None,
        last: None,
    };
    report.growth.trends = vec![trend("anon", "bytes", 3600.0 * 1024.0), trend("tasks", "tasks", 36.0)];
    let got = series(&render_trace(&report));
    let t = r#"cgroup="/sys/fs/cgroup/memory/leaky",container="leaky",container_id="abababababab",image="leaky:1",pod="",namespace="""#;
    assert_eq!(got[&format!("leaktrace_memory_growth_bytes_per_second{{{t},category=\"anon\"}}")], 1024.0);
    assert!(!got.keys().any(|k| k.contains("tasks")), "tasks are not bytes");
}

/// The function is a label: at most `MAX_SITES` of them, only sites that hold memory, and any name is escaped.
#[test]
fn site_series_are_bounded_and_their_names_escaped() {
    let mut report = sample_report();
    report.sites = (0..30)
        .map(|i| site("anon", 1000 - i, vec![frame(Some(&format!("f{i}")), 0x5555_0000_1000 + i as u64, false)]))
        .collect();
    report.sites.push(site("anon", -5, vec![frame(Some("freed"), 0x1000, false)]));
    report.sites[0].label = Some(r#"operator"" _kib(unsigned long long) \ x"#.into());
    let text = render(&[(&report, target())], &Tracer::of(&report.collection, target()), 50);
    let sites: Vec<&str> = text.lines().filter(|l| l.starts_with("leaktrace_site_outstanding_bytes{")).collect();
    assert_eq!(sites.len(), MAX_SITES);
    let first = sites.iter().find(|l| l.contains(r#"rank="1""#)).unwrap();
    assert!(first.contains(r#"function="operator\"\" _kib(unsigned long long) \\ x""#), "{first}");
    assert!(!text.contains("freed"));
    assert_eq!(series(&text).len(), text.lines().filter(|l| !l.starts_with('#')).count());
}

#[test]
fn a_bare_cgroup_has_empty_container_labels() {
    let mut report = sample_report();
    report.target.container = None;
    let labels = target_labels(&report);
    assert_eq!(labels[1], ("container", String::new()));
    assert_eq!(labels[2], ("container_id", String::new()));
    assert_eq!(labels[3], ("image", String::new()));
}

/// The agent's exposition: every container's series in one family each, the agent's own without a target.
#[test]
fn many_targets_share_each_family_and_the_tracer_stands_alone() {
    let a = sample_report();
    let mut b = sample_report();
    b.target.cgroup_path = "/sys/fs/cgroup/memory/docker/b".into();
    b.target.container.as_mut().unwrap().name = "b".into();
    b.target.container.as_mut().unwrap().pod = Some("web-1".into());
    b.verdict.class = "no-leak".into();
    let tracer = Tracer { containers: Some(2), ..Tracer::of(&a.collection, Vec::new()) };
    let text = render(&[(&a, target_labels(&a)), (&b, target_labels(&b))], &tracer, MAX_SITES);
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let unique: std::collections::BTreeSet<&&str> = types.iter().collect();
    assert_eq!(types.len(), unique.len(), "a family's TYPE once: {text}");
    let got = series(&text);
    let info = |container: &str, pod: &str, class: &str| {
        got.keys().any(|k| {
            k.starts_with("leaktrace_verdict_info{")
                && k.contains(&format!(
                    "container=\"{container}\",container_id=\"abababababab\",image=\"leaky:1\",pod=\"{pod}\""
                ))
                && k.contains(&format!("class=\"{class}\""))
        })
    };
    assert!(info("leaky", "", &a.verdict.class) && info("b", "web-1", "no-leak"), "{text}");
    assert_eq!(got.get("leaktrace_containers{}"), Some(&2.0), "{text}");
    assert!(got.contains_key("leaktrace_tracer_peak_resident_bytes{}"), "the agent's own series have no target labels");
}
