//! deploy/: the DaemonSet and the Prometheus alert rules, checked by the tools that consume them. promtool (from
//! Debian's prometheus) checks the rules and runs their unit tests (deploy/alerts_test.yaml: the heap-leak alert
//! fires after 15 minutes of a sure verdict, not for an unsure one). The manifest is parsed, its agent arguments
//! are leaktrace's own, and `kubectl kustomize` builds it where kubectl is installed (a client-side dry run needs
//! an API server, which a test machine does not have).
use std::{path::PathBuf, process::Command};

use anyhow::{ensure, Context, Result};
use leaktrace_e2e::{describe, leaktrace_bin};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?}: {}", describe(&out));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    let checked = run(Command::new("promtool").arg("check").arg("rules").arg(deploy().join("alerts.yaml")))?;
    ensure!(checked.contains("SUCCESS: 2 rules found"), "{checked}");
    let tested = run(Command::new("promtool").arg("test").arg("rules").arg(deploy().join("alerts_test.yaml")))?;
    ensure!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

#[test]
fn the_daemonset_runs_the_agent_privileged_on_the_hosts_pids_and_cgroups() -> Result<()> {
    let text = std::fs::read_to_string(deploy().join("daemonset.yaml"))?;
    let docs = YamlLoader::load_from_str(&text).context("daemonset.yaml is not YAML")?;
    let ds = docs.iter().find(|d| d["kind"].as_str() == Some("DaemonSet")).context("no DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(pod["hostPID"].as_bool() == Some(true), "hostPID: {:?}", pod["hostPID"]);
    let selector = &ds["spec"]["selector"]["matchLabels"];
    ensure!(selector == &ds["spec"]["template"]["metadata"]["labels"], "the selector does not select the pods");
    let agent = pod["containers"].as_vec().and_then(|c| c.first()).context("no container")?;
    ensure!(agent["securityContext"]["privileged"].as_bool() == Some(true), "not privileged");
    for r in ["requests", "limits"] {
        ensure!(agent["resources"][r]["memory"].as_str().is_some(), "no memory {r}");
    }
    let mounts: Vec<&str> =
        agent["volumeMounts"].as_vec().into_iter().flatten().filter_map(|m| m["mountPath"].as_str()).collect();
    ensure!(mounts.contains(&"/sys") && mounts.contains(&"/run/containerd"), "mounts: {mounts:?}");
    let volumes: Vec<&str> = pod["volumes"].as_vec().into_iter().flatten().filter_map(|v| v["name"].as_str()).collect();
    for m in agent["volumeMounts"].as_vec().into_iter().flatten() {
        let name = m["name"].as_str().unwrap_or("");
        ensure!(volumes.contains(&name), "mount {name} has no volume");
    }
    // The arguments are leaktrace's: every flag is one `leaktrace agent` knows.
    let args: Vec<&str> = agent["args"].as_vec().into_iter().flatten().filter_map(Yaml::as_str).collect();
    ensure!(args.first() == Some(&"agent"), "args: {args:?}");
    let port = agent["ports"][0]["containerPort"].as_i64().context("no port")?;
    ensure!(args.contains(&format!("0.0.0.0:{port}").as_str()), "--listen is not the port declared: {args:?}");
    let help = run(Command::new(leaktrace_bin()?).args(["agent", "--help"]))?;
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        ensure!(help.contains(flag), "leaktrace agent has no {flag}");
    }
    match Command::new("kubectl").arg("kustomize").arg(deploy()).output() {
        Ok(out) => {
            ensure!(out.status.success(), "kubectl kustomize deploy/: {}", describe(&out));
            let built = String::from_utf8_lossy(&out.stdout);
            ensure!(built.contains("kind: DaemonSet") && built.contains("kind: Namespace"), "{built}");
        }
        Err(e) => eprintln!("kubectl is not installed ({e}): the manifest was parsed, not built by kustomize"),
    }
    Ok(())
}
