//! The verdict. For now it only restates the evidence; the classifier comes later.
use crate::{
    export::human_bytes,
    report::{Coverage, Report, Verdict},
    sites::app_frame,
};

pub fn judge(report: &Report) -> Verdict {
    let a = &report.attribution;
    let mut evidence = vec![
        growth_line("anon", &a.anon),
        growth_line("slab/kernel", &a.slab),
        format!("{} OOM kill(s) in the window", report.oom_kills.len()),
    ];
    if let Some(top) = report.sites.first() {
        let name = app_frame(top).map_or("an unknown function", |f| f.label());
        evidence.push(format!("top site: {} {} outstanding from {name}", top.kind, human_bytes(top.outstanding_bytes)));
    }
    evidence.push("the classifier is not built yet: no class is claimed".into());
    Verdict { class: "inconclusive".into(), confidence: 0.0, evidence }
}

fn growth_line(what: &str, c: &Coverage) -> String {
    let coverage = c.coverage.map_or("n/a".to_string(), |r| format!("{:.0}%", r * 100.0));
    format!(
        "{what} grew {} over the window; sites account for {} (coverage {coverage})",
        human_bytes(c.growth_bytes),
        human_bytes(c.attributed_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn inconclusive_with_the_numbers() {
        let v = judge(&sample_report());
        assert_eq!(v.class, "inconclusive");
        assert_eq!(v.confidence, 0.0);
        let text = v.evidence.join("\n");
        assert!(text.contains("anon grew 64.0 MiB"), "{text}");
        assert!(text.contains("coverage 100%"), "{text}");
        assert!(text.contains("coverage n/a"), "{text}");
        assert!(text.contains("1 OOM kill"), "{text}");
        assert!(text.contains("from grow_cache"), "{text}");
        assert!(text.contains("not built yet"), "{text}");
    }

    #[test]
    fn empty_report_still_judged() {
        let mut r = sample_report();
        r.sites.clear();
        r.oom_kills.clear();
        let v = judge(&r);
        assert_eq!(v.evidence.len(), 4);
        assert!(v.evidence[2].starts_with("0 OOM"));
    }
}
