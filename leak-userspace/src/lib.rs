//! leaktrace: who allocates the memory of a cgroup, with evidence.
//!
//! The modules follow the data flow:
//! `cgroup` (which cgroup) -> `kernel` (what this kernel offers) -> `probes` (eBPF programs and their maps) ->
//! `collect` (draining maps and events every interval) + `memory` (the cgroup's own accounting) -> `stacks` (user
//! stack samples unwound, then every stack symbolized) ->
//! `sites` (aggregated call sites) -> `attribution` (sites against memory.stat growth) -> `verdict` ->
//! `report` (report.json model) -> `export` (folded stacks, terminal summary); `live` shows the trace as it runs; `jvm_attach` speaks to running JVMs;
//! `session` runs one trace, `agent` every container of a node.
pub mod agent;
pub mod attribution;
pub mod cgroup;
pub mod cli;
pub mod collect;
pub mod demo;
pub mod export;
pub mod jvm_attach;
pub mod kernel;
pub mod live;
pub mod memory;
pub mod output;
pub mod privilege;
pub mod probes;
pub mod report;
pub mod serve;
pub mod session;
pub mod sites;
pub mod stacks;
pub mod stop;
pub mod verdict;
