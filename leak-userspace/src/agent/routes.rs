//! What the agent serves on `--listen`: every container's metrics on `/metrics`, the list of profiles on
//! `/pprof/`, each container's outstanding memory as a pprof profile on `/pprof/<container>/heap` (the containers
//! that went too, for a while) and its report on `/report/<container>.json`.
use anyhow::Result;

use super::fleet::Fleet;
use crate::{
    collect::assemble::resource_usage,
    export::{metrics, pprof},
    probes::Probes,
    report::Report,
    serve::Response,
};

/// What a path asks for.
#[derive(Debug, PartialEq)]
enum Asked<'a> {
    Index,
    Metrics,
    Listing,
    Profile(&'a str),
    Report(&'a str),
    Nothing,
}

fn asked(path: &str) -> Asked<'_> {
    match path {
        "/" => Asked::Index,
        "/metrics" => Asked::Metrics,
        "/pprof" | "/pprof/" => Asked::Listing,
        _ => {
            if let Some(key) = path.strip_prefix("/pprof/").and_then(|p| p.strip_suffix("/heap")) {
                Asked::Profile(key)
            } else if let Some(key) = path.strip_prefix("/report/").and_then(|p| p.strip_suffix(".json")) {
                Asked::Report(key)
            } else {
                Asked::Nothing
            }
        }
    }
}

/// Answers `path` from the fleet as it stands: only the reports a path needs are made.
pub fn route(path: &str, fleet: &mut Fleet, probes: &Probes) -> Response {
    match answer(path, fleet, probes) {
        Ok(r) => r,
        Err(e) => Response::text(503, format!("cannot read the trace: {e:#}\n")),
    }
}

fn answer(path: &str, fleet: &mut Fleet, probes: &Probes) -> Result<Response> {
    Ok(match asked(path) {
        Asked::Index => Response::text(200, INDEX),
        Asked::Metrics => {
            let reports = fleet.live_reports(probes)?;
            let targets: Vec<(&Report, metrics::Labels)> =
                reports.iter().map(|(_, r)| (r, metrics::target_labels(r))).collect();
            let mut tracer = match reports.first() {
                Some((_, r)) => metrics::Tracer::of(&r.collection, Vec::new()),
                None => {
                    let (cpu_seconds, peak_rss_bytes) = resource_usage();
                    let map_bytes = crate::probes::map_bytes();
                    metrics::Tracer { cpu_seconds, peak_rss_bytes, map_bytes, ..Default::default() }
                }
            };
            tracer.containers = Some(fleet.len());
            tracer.unassigned_bytes = Some(fleet.unassigned_bytes());
            let text = metrics::render(&targets, &tracer, metrics::MAX_SITES);
            Response::ok(metrics::CONTENT_TYPE, text.into_bytes())
        }
        Asked::Listing => Response::text(200, listing(fleet)),
        Asked::Profile(key) => match fleet.report_of(probes, key)? {
            Some(r) => Response::ok("application/octet-stream", pprof::profile_bytes(&r)),
            None => unknown(key, fleet),
        },
        Asked::Report(key) => match fleet.report_of(probes, key)? {
            Some(r) => Response::ok("application/json", serde_json::to_vec_pretty(&r)?),
            None => unknown(key, fleet),
        },
        Asked::Nothing => Response::text(404, format!("{path} is not served\n{INDEX}")),
    })
}

fn unknown(key: &str, fleet: &Fleet) -> Response {
    Response::text(404, format!("no container {key:?} is traced\n{}", listing(fleet)))
}

/// One line per container: its profile's path, and whether it is gone.
fn listing(fleet: &Fleet) -> String {
    let (live, gone) = fleet.keys();
    let mut out = String::new();
    for key in live {
        out += &format!("/pprof/{key}/heap\n");
    }
    for key in gone {
        out += &format!("/pprof/{key}/heap (gone)\n");
    }
    out
}

const INDEX: &str = "leaktrace agent serves:\n  /metrics                   Prometheus metrics of every container\n  \
                     /pprof/                    the containers' profiles\n  /pprof/<container>/heap    a \
                     container's outstanding memory by site, as a pprof profile\n  /report/<container>.json   a \
                     container's report.json as it would read now\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_what_they_ask_for() {
        assert_eq!(asked("/"), Asked::Index);
        assert_eq!(asked("/metrics"), Asked::Metrics);
        assert_eq!(asked("/pprof/"), Asked::Listing);
        assert_eq!(asked("/pprof/web-1/heap"), Asked::Profile("web-1"));
        assert_eq!(asked("/pprof/prod/api-7f9c/api/heap"), Asked::Profile("prod/api-7f9c/api"));
        assert_eq!(asked("/report/web-1.json"), Asked::Report("web-1"));
        assert_eq!(asked("/pprof/heap"), Asked::Nothing, "a trace's path: the agent has no one profile");
        assert_eq!(asked("/report.json"), Asked::Nothing);
    }
}
