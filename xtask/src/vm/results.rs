//! What a guest printed on its console (LT-* lines from vm/init.sh), the verdict on each scenario with the same
//! checks as the host e2e tests, and the kernel x scenario table.
use anyhow::{ensure, Context, Result};
use leaktrace_e2e::scenarios::{self, Scenario};
use serde_json::Value;

/// What the guest printed.
#[derive(Clone, Debug, Default)]
pub struct Guest {
    release: String,
    pub scenarios: Vec<GuestScenario>,
}

#[derive(Clone, Debug, Default)]
pub struct GuestScenario {
    name: String,
    leaktrace_exit: Option<i32>,
    workload_alive: bool,
    workload_exit: Option<i32>,
    workload_pid: Option<u64>,
    oom_kills: Option<u64>,
    seconds: Option<f64>,
    log: Vec<String>,
    report: Option<String>,
}

pub fn parse_console(console: &str) -> Guest {
    let mut guest = Guest::default();
    let mut in_report: Option<String> = None;
    for line in console.lines() {
        // The first line may follow the firmware's terminal escapes.
        let line = line.find("LT-KERNEL").map_or(line, |at| &line[at..]);
        if let Some(report) = in_report.as_mut() {
            if line == "LT-REPORT-END" {
                if let Some(s) = guest.scenarios.last_mut() {
                    s.report = in_report.take();
                }
                in_report = None;
            } else {
                report.push_str(line);
                report.push('\n');
            }
            continue;
        }
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        if tag == "LT-KERNEL" {
            guest.release = rest.to_string();
            continue;
        }
        if tag == "LT-BEGIN" {
            guest.scenarios.push(GuestScenario { name: rest.to_string(), ..Default::default() });
            continue;
        }
        let Some(s) = guest.scenarios.last_mut() else { continue };
        match tag {
            "LT-LEAKTRACE-EXIT" => s.leaktrace_exit = rest.parse().ok(),
            "LT-WORKLOAD-ALIVE" => s.workload_alive = rest == "1",
            "LT-WORKLOAD-EXIT" => s.workload_exit = rest.parse().ok(),
            "LT-WORKLOAD-PID" => s.workload_pid = rest.parse().ok(),
            "LT-SECONDS" => s.seconds = rest.parse().ok(),
            "LT-EVENTS" => s.oom_kills = rest.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()),
            "LT-LOG" => s.log.push(rest.to_string()),
            "LT-REPORT-BEGIN" => in_report = Some(String::new()),
            _ => {}
        }
    }
    guest
}

/// One scenario's verdict in one guest.
#[derive(Clone, Debug)]
pub struct Judged {
    scenario: &'static str,
    coverage: Option<f64>,
    seconds: Option<f64>,
    modes: String,
    pub error: Option<String>,
}

pub fn judge(guest: &Guest) -> Vec<Judged> {
    scenarios::ALL
        .iter()
        .map(|scenario| {
            let ran = guest.scenarios.iter().find(|s| s.name == scenario.name);
            let report = ran.and_then(|s| s.report.as_deref()).and_then(|r| serde_json::from_str::<Value>(r).ok());
            let modes = report
                .as_ref()
                .and_then(|r| r["kernel"]["modes"].as_array().cloned())
                .map(|m| m.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            let verdict = match ran {
                None => Err(anyhow::anyhow!("did not run")),
                Some(ran) => judge_one(scenario, ran, report.as_ref()),
            };
            if let (Err(e), Some(ran)) = (&verdict, ran) {
                let collection = report.as_ref().map_or(Value::Null, |r| r["collection"].clone());
                eprintln!(
                    "{} on {}: {e:#}\ncollection: {collection}\nleaktrace said:\n{}",
                    scenario.name,
                    guest.release,
                    ran.log.join("\n")
                );
            }
            Judged {
                scenario: scenario.name,
                coverage: verdict.as_ref().ok().copied().flatten(),
                seconds: ran.and_then(|s| s.seconds),
                modes,
                error: verdict.err().map(|e| first_line(&format!("{e:#}"))),
            }
        })
        .collect()
}

fn judge_one(scenario: &Scenario, ran: &GuestScenario, report: Option<&Value>) -> Result<Option<f64>> {
    ensure!(ran.leaktrace_exit == Some(0), "leaktrace exited with {:?}", ran.leaktrace_exit);
    let report = report.context("no readable report.json")?;
    let coverage = (scenario.check)(report)?;
    if scenario.expect_oom_kill {
        ensure!(!ran.workload_alive, "the workload outlived the trace: no OOM kill");
        ensure!(ran.workload_exit == Some(137), "the workload ended with status {:?}, not SIGKILL", ran.workload_exit);
        ensure!(ran.oom_kills.is_some_and(|n| n >= 1), "memory.events counts {:?} OOM kills", ran.oom_kills);
        let killed = scenarios::first_oom_pid(report);
        ensure!(killed == ran.workload_pid, "oom_kills[0] is pid {killed:?}, not the workload {:?}", ran.workload_pid);
    }
    Ok(coverage)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

pub struct Row {
    pub kernel: &'static str,
    pub guest: Guest,
    pub result: Judged,
}

pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "\n{:<17} {:<26} {:<14} {:<6} {:>8} {:>6}  {}\n",
        "kernel", "release", "scenario", "result", "coverage", "secs", "modes / why it failed"
    );
    for row in rows {
        let r = &row.result;
        out += &format!(
            "{:<17} {:<26} {:<14} {:<6} {:>8} {:>6}  {}\n",
            row.kernel,
            row.guest.release,
            r.scenario,
            if r.error.is_none() { "pass" } else { "FAIL" },
            r.coverage.map_or("-".into(), |c| format!("{:.0}%", c * 100.0)),
            r.seconds.map_or("-".into(), |s| format!("{s:.1}")),
            r.error.as_deref().unwrap_or(&r.modes),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guest_console() {
        let console = "noise\n\x1bc\x1b[?7lLT-KERNEL 6.1.0-50-cloud-amd64\nLT-BEGIN oom-kill\nLT-LEAKTRACE-EXIT 0\n\
            LT-WORKLOAD-ALIVE 0\nLT-WORKLOAD-EXIT 137\nLT-WORKLOAD-PID 197\nLT-SECONDS 12.5\nLT-EVENTS oom_kill 1\n\
            LT-LOG leaktrace: attached\nLT-REPORT-BEGIN\n{\"a\":\n 1}\nLT-REPORT-END\nLT-END oom-kill\nLT-DONE\n";
        let guest = parse_console(console);
        assert_eq!(guest.release, "6.1.0-50-cloud-amd64");
        let s = &guest.scenarios[0];
        assert_eq!(s.name, "oom-kill");
        assert_eq!((s.leaktrace_exit, s.workload_alive, s.workload_exit), (Some(0), false, Some(137)));
        assert_eq!((s.workload_pid, s.oom_kills, s.seconds), (Some(197), Some(1), Some(12.5)));
        assert_eq!(s.log, ["leaktrace: attached"]);
        assert_eq!(serde_json::from_str::<Value>(s.report.as_deref().unwrap()).unwrap()["a"], 1);
    }

    #[test]
    fn a_scenario_without_a_report_fails_and_says_why() {
        let guest = Guest {
            release: "x".into(),
            scenarios: vec![GuestScenario { name: "oom-kill".into(), leaktrace_exit: Some(1), ..Default::default() }],
        };
        let judged = judge(&guest);
        assert_eq!(judged.len(), scenarios::ALL.len());
        assert!(judged[0].error.as_deref().unwrap().contains("exited with Some(1)"), "{judged:?}");
        assert_eq!(judged[1].error.as_deref(), Some("did not run"));
    }
}
