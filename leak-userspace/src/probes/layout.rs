//! Discovers what the programs need to know about the running kernel: raw tracepoint argument positions and
//! struct member offsets from BTF, the OOM tracepoint's record layout and the gfp flag bits from tracefs `format`
//! files, memcg item numbers from BTF. Nothing is assumed about a kernel version.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use leak_common::{arg, Config, ExitConfig, ITEM_NONE, OFFSET_NONE};

use crate::kernel::{btf::KernelBtf, tracefs};

/// What this kernel offers, and how the programs are configured for it.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub config: Config,
    /// The task offsets of the exit and signal programs.
    pub exit_config: ExitConfig,
    /// The tracepoints present with everything the programs read from them.
    events: Vec<(&'static str, &'static str)>,
    /// Attribution paths that will be active, for the user and for report.json `kernel.modes`.
    pub modes: Vec<String>,
    /// One line per missing capability: what is missing and what that costs.
    pub degraded: Vec<String>,
}

impl Discovery {
    pub fn has_event(&self, category: &str, event: &str) -> bool {
        self.events.iter().any(|&(c, e)| c == category && e == event)
    }

    /// Records that `modes` cannot be active after all (a program the kernel refused), and why.
    pub fn lose(&mut self, modes: &[&str], why: String) {
        let lost: Vec<String> = self.modes.iter().filter(|m| modes.contains(&m.as_str())).cloned().collect();
        self.modes.retain(|m| !lost.contains(m));
        self.degraded.push(if lost.is_empty() { why } else { format!("{why}; lost: {}", lost.join(", ")) });
    }
}

/// Where a discovered offset goes in the config.
type Slot = fn(&mut Config) -> &mut u32;

/// One prototype of a raw tracepoint the programs can read: the C type expected at each argument position they
/// use (BTF keeps no argument names), and what the config must say for the programs to read this one.
struct Layout {
    args: &'static [(usize, &'static str)],
    configure: fn(&mut Config),
}

/// A raw tracepoint the programs read: present when its prototype matches one of `layouts` (the first that does).
struct RawEvent {
    category: &'static str,
    event: &'static str,
    layouts: &'static [Layout],
}

const fn fixed(args: &'static [(usize, &'static str)]) -> Layout {
    Layout { args, configure: |_| {} }
}

const RAW_EVENTS: &[RawEvent] = &[
    RawEvent {
        category: "kmem",
        event: "mm_page_alloc",
        layouts: &[fixed(&[
            (arg::PAGE_ALLOC_PAGE, "struct page *"),
            (arg::PAGE_ALLOC_ORDER, "unsigned int"),
            (arg::PAGE_ALLOC_GFP, "gfp_t"),
        ])],
    },
    RawEvent { category: "kmem", event: "mm_page_free", layouts: &[fixed(&[(arg::PAGE_FREE_PAGE, "struct page *")])] },
    RawEvent {
        category: "kmem",
        event: "kmalloc",
        layouts: &[fixed(&[(arg::KMALLOC_PTR, "const void *"), (arg::KMALLOC_BYTES_ALLOC, "size_t")])],
    },
    RawEvent { category: "kmem", event: "kfree", layouts: &[fixed(&[(arg::FREE_PTR, "const void *")])] },
    RawEvent {
        category: "kmem",
        event: "kmem_cache_alloc",
        layouts: &[
            Layout {
                args: &[(arg::CACHE_ALLOC_PTR, "const void *"), (arg::CACHE_ALLOC_CACHE, "struct kmem_cache *")],
                configure: |c| c.cache_alloc_has_cache = 1,
            },
            fixed(&[(arg::CACHE_ALLOC_PTR, "const void *"), (arg::CACHE_ALLOC_BYTES_ALLOC, "size_t")]),
        ],
    },
    RawEvent { category: "kmem", event: "kmem_cache_free", layouts: &[fixed(&[(arg::FREE_PTR, "const void *")])] },
    RawEvent {
        category: "memcg",
        event: "mod_memcg_lruvec_state",
        layouts: &[fixed(&[(arg::MEMCG, "struct mem_cgroup *"), (arg::MEMCG_ITEM, "int"), (arg::MEMCG_VAL, "int")])],
    },
    // The exiting task is the current one: its program reads no argument (6.16 added `bool group_dead`).
    RawEvent { category: "sched", event: "sched_process_exit", layouts: &[fixed(&[])] },
    // `--heap` only: new processes of the target, probed at once.
    RawEvent {
        category: "sched",
        event: "sched_process_fork",
        layouts: &[fixed(&[(arg::FORK_CHILD, "struct task_struct *")])],
    },
    RawEvent { category: "sched", event: "sched_process_exec", layouts: &[fixed(&[])] },
    RawEvent {
        category: "signal",
        event: "signal_generate",
        layouts: &[fixed(&[(arg::SIGNAL_SIG, "int"), (arg::SIGNAL_TASK, "struct task_struct *")])],
    },
];

/// The first of `layouts` that this prototype (its argument types) matches, by index.
fn matching(types: &[String], layouts: &[Layout]) -> Option<usize> {
    layouts.iter().position(|l| l.args.iter().all(|&(i, ty)| types.get(i).is_some_and(|t| t == ty)))
}

/// Record fields read from `oom:mark_victim`, a classic tracepoint: (field, required, where its offset goes).
/// Kernels before ~6.9 carry only the pid.
const VICTIM_FIELDS: &[(&str, bool, Slot)] = &[
    ("pid", true, |c| &mut c.victim_pid),
    ("comm", false, |c| &mut c.victim_comm),
    ("total_vm", false, |c| &mut c.victim_total_vm),
    ("anon_rss", false, |c| &mut c.victim_anon_rss),
    ("file_rss", false, |c| &mut c.victim_file_rss),
    ("shmem_rss", false, |c| &mut c.victim_shmem_rss),
];

/// Events that older kernels (before 6.1) split off for NUMA-node allocations, with the event whose program and
/// prototype they share: (event, its twin in RAW_EVENTS). Without them those allocations would go unseen.
pub const NODE_VARIANTS: &[(&str, &str)] =
    &[("kmalloc_node", "kmalloc"), ("kmem_cache_alloc_node", "kmem_cache_alloc")];

/// Tracepoints to treat as absent, `category:event` separated by commas: runs the fallback paths of older kernels on
/// a kernel that has everything (the e2e tests compare both on one kernel).
pub const IGNORE_EVENTS_ENV: &str = "LEAKTRACE_IGNORE_EVENTS";

fn ignored(ignore: &str, category: &str, event: &str) -> bool {
    ignore.split(',').any(|e| e.trim() == format!("{category}:{event}"))
}

/// `exact_anon`: tell anon pages by their memcg charge where the kernel can (`--record-all`). That costs a program
/// run on each of the ~4 memcg stat updates of every page, more than all other tracing of a page together, so
/// sampled mode tells them by gfp flags, as kernels without the charge tracepoint must.
/// `ustack_chunks`: copy that many chunks of user stack per kept allocation for unwinding in userspace (`None`:
/// frame-pointer user stacks walked by the kernel).
pub fn discover(exact_anon: bool, ustack_chunks: Option<u32>) -> Result<Discovery> {
    let root = tracefs::tracefs_root()?;
    let btf = KernelBtf::load()?;
    let mut config = Config::unset();
    let mut events = Vec::new();
    let mut degraded = Vec::new();
    let ignore = std::env::var(IGNORE_EVENTS_ENV).unwrap_or_default();
    let skip = |category: &str, event: &str, degraded: &mut Vec<String>| {
        let skipped = ignored(&ignore, category, event);
        if skipped {
            degraded.push(format!("tracepoint {category}:{event} is ignored ({IGNORE_EVENTS_ENV})"));
        }
        skipped
    };

    let mut layouts = BTreeMap::new();
    for e in RAW_EVENTS {
        if skip(e.category, e.event, &mut degraded) {
            continue;
        }
        let Some(types) = btf.tracepoint_args(e.event) else {
            degraded.push(format!("tracepoint {}:{} is absent", e.category, e.event));
            continue;
        };
        match matching(&types, e.layouts) {
            Some(layout) => {
                (e.layouts[layout].configure)(&mut config);
                layouts.insert(e.event, layout);
                events.push((e.category, e.event));
            }
            None => degraded.push(format!(
                "tracepoint {}:{} has arguments ({}) this leaktrace cannot read",
                e.category,
                e.event,
                types.join(", ")
            )),
        }
    }

    for (variant, twin) in NODE_VARIANTS {
        let (Some(types), Some(&base)) = (btf.tracepoint_args(variant), layouts.get(twin)) else {
            continue;
        };
        let all = RAW_EVENTS.iter().find(|e| e.event == *twin).map_or(&[][..], |e| e.layouts);
        if matching(&types, all) == Some(base) {
            events.push(("kmem", variant));
        } else {
            degraded.push(format!("kmem:{variant} differs in arguments from kmem:{twin}: its allocations go unseen"));
        }
    }

    if !skip("oom", "mark_victim", &mut degraded) {
        match tracefs::read_format(&root, "oom", "mark_victim")? {
            Some(format) if format.field("pid").is_some() => {
                for (name, _, slot) in VICTIM_FIELDS {
                    *slot(&mut config) = format.field(name).map_or(OFFSET_NONE, |f| f.offset);
                }
                events.push(("oom", "mark_victim"));
            }
            Some(_) => degraded.push("tracepoint oom:mark_victim has no field `pid`".into()),
            None => degraded.push("tracepoint oom:mark_victim is absent".into()),
        }
    }

    let exit_config = exit_offsets(&btf, &mut events, &mut degraded);
    config.item_anon_mapped = item(&btf, "node_stat_item", "NR_ANON_MAPPED");
    task_walk(&btf, &mut config)?;
    config.memcg_css = btf.member_offset("mem_cgroup", "css").unwrap_or(OFFSET_NONE);
    config.kmem_cache_size = btf.member_offset("kmem_cache", "size").unwrap_or(OFFSET_NONE);
    config.kmem_cache_name = btf.member_offset("kmem_cache", "name").unwrap_or(OFFSET_NONE);
    config.page_size = page_size();
    config.oom_reaper_pid = kernel_thread("oom_reaper").unwrap_or(0);
    config.khugepaged_pid = kernel_thread("khugepaged").unwrap_or(0);
    let mut modes = Vec::new();
    // Frame-pointer mode reads them too: the user instruction keys the reuse of kernel stacks.
    let registers = user_registers(&btf, &mut config);
    if let Some(chunks) = ustack_chunks {
        match registers {
            Ok(how) => {
                config.ustack_chunks = chunks;
                modes.push(format!("dwarf-unwind:{how}"));
                match task_fsbase(&btf) {
                    Some(offset) => {
                        config.task_fsbase = offset;
                        modes.push("python-frames".to_string());
                    }
                    None => degraded.push(
                        "no task_struct.thread.fsbase in this kernel's BTF: Python frames are not read".to_string(),
                    ),
                }
            }
            Err(why) => degraded.push(format!("{why}: user stacks are walked by frame pointers")),
        }
    }
    // A page's user stack sample carries the registers its fault's address is worked out from (without samples
    // there is nothing to carry them).
    let faults = config.regs_orig_ax != OFFSET_NONE && config.regs_gp != OFFSET_NONE;
    if config.ustack_chunks > 0 && faults {
        modes.push("fault-address".to_string());
    } else {
        config.regs_gp = OFFSET_NONE;
    }
    if config.ustack_chunks > 0 && !faults {
        degraded.push(
            "no pt_regs.orig_ax or general registers in BTF: sites carry no `region`, and the verdict cannot tell \
             when the top anon site's pages lie in a malloc heap (whose holder --heap names)"
                .to_string(),
        );
    }

    // The gfp bit that marks memory charged to a memcg, from the page allocation event's own flag table.
    let page_alloc_fmt = tracefs::read_format(&root, "kmem", "mm_page_alloc")?.map_or(String::new(), |f| f.print_fmt);
    let gfp = |flags: &[&str]| gfp_mask(&page_alloc_fmt, flags);
    config.gfp_account = gfp(&["__GFP_ACCOUNT"]);
    drop_unreadable(&config, &mut events, &mut degraded);
    let has = |c: &str, e: &str| events.contains(&(c, e));
    if has("kmem", "mm_page_alloc") && has("kmem", "mm_page_free") {
        modes.push("pages".to_string());
    }
    if has("kmem", "kmalloc")
        && has("kmem", "kfree")
        && has("kmem", "kmem_cache_alloc")
        && has("kmem", "kmem_cache_free")
    {
        modes.push("slab".to_string());
    }
    if modes.is_empty() {
        bail!("this kernel has neither the kmem page nor the slab tracepoints (kmem:mm_page_alloc, kmem:kmalloc); leaktrace cannot attribute allocations here");
    }
    let anon_charges = has("memcg", "mod_memcg_lruvec_state") && config.item_anon_mapped != ITEM_NONE;
    let slab_unnamed =
        has("kmem", "kmem_cache_alloc") && (config.cache_alloc_has_cache == 0 || config.kmem_cache_name == OFFSET_NONE);
    let victim = has("oom", "mark_victim");
    let pages = has("kmem", "mm_page_alloc");
    let (exits, senders) = (has("sched", "sched_process_exit"), has("signal", "signal_generate"));
    if anon_charges && exact_anon {
        config.anon_by_charge = 1;
        modes.push("memcg-anon-charges".to_string());
    } else {
        events.retain(|&(c, _)| c != "memcg");
        config.gfp_user = gfp(&["__GFP_HARDWALL", "__GFP_MOVABLE"]);
        config.gfp_zero = gfp(&["__GFP_ZERO"]);
        config.gfp_thp = gfp(&["__GFP_COMP", "__GFP_NOMEMALLOC"]);
        if config.gfp_user != 0 && config.gfp_zero != 0 && config.gfp_account != 0 {
            modes.push("gfp-anon".to_string());
            if exact_anon {
                degraded.push(
                    "no memcg:mod_memcg_lruvec_state: anon pages are told by their gfp flags (zeroed user pages, huge \
                 pages); copy-on-write copies after fork count as `other`"
                        .to_string(),
                );
            }
        } else {
            config.gfp_user = 0;
            degraded.push(
                "no usable gfp flags in kmem:mm_page_alloc and no memcg charges traced: anon pages are reported as \
                 `other` sites"
                    .to_string(),
            );
        }
    }
    if slab_unnamed {
        degraded
            .push("kmem:kmem_cache_alloc passes no cache (before 6.1): slab sites of named caches are unnamed".into());
    }
    if victim {
        modes.push(if config.victim_anon_rss != OFFSET_NONE { "oom-victim-rss" } else { "oom-victim" }.to_string());
    } else {
        degraded.push("no oom:mark_victim: OOM kills are only counted from memory.oom_control / memory.events".into());
    }
    if exits {
        modes.push("exits".to_string());
        if senders {
            modes.push("exit-senders".to_string());
        } else {
            degraded.push("no signal:signal_generate: deaths by a signal do not name their sender".into());
        }
    } else {
        degraded.push(
            "no sched:sched_process_exit: deaths other than OOM kills are not recorded (exits[] stays empty)".into(),
        );
    }
    if pages && config.gfp_account == 0 {
        degraded.push(
            "cannot read __GFP_ACCOUNT of page allocations: page cache pages count as kernel `page` sites".into(),
        );
    }
    if config.oom_reaper_pid == 0 {
        degraded.push("no oom_reaper thread found: its frees count as ordinary frees".into());
    }
    Ok(Discovery { config, exit_config, events, modes, degraded })
}

/// The task_struct members the exit and signal programs read; an event whose members this BTF lacks is dropped.
fn exit_offsets(
    btf: &KernelBtf,
    events: &mut Vec<(&'static str, &'static str)>,
    degraded: &mut Vec<String>,
) -> ExitConfig {
    let offset = |m: &str| btf.member_offset("task_struct", m).unwrap_or(OFFSET_NONE);
    let c = ExitConfig {
        task_exit_code: offset("exit_code"),
        task_start_time: offset("start_time"),
        task_tgid: offset("tgid"),
        _pad: 0,
    };
    for (event, member, offset) in [
        ("sched_process_exit", "exit_code", c.task_exit_code),
        ("signal_generate", "tgid", c.task_tgid),
        ("sched_process_fork", "tgid", c.task_tgid),
    ] {
        if offset == OFFSET_NONE && events.iter().any(|&(_, e)| e == event) {
            events.retain(|&(_, e)| e != event);
            degraded.push(format!("this kernel's BTF has no task_struct.{member}: {event} is not traced"));
        }
    }
    c
}

/// Events whose arguments are there but whose structs lack what the programs read through them.
fn drop_unreadable(config: &Config, events: &mut Vec<(&'static str, &'static str)>, degraded: &mut Vec<String>) {
    let no_size = config.cache_alloc_has_cache != 0 && config.kmem_cache_size == OFFSET_NONE;
    if no_size && events.iter().any(|&(_, e)| e.starts_with("kmem_cache_alloc")) {
        events.retain(|&(_, e)| !e.starts_with("kmem_cache_alloc"));
        degraded.push("this kernel's BTF has no kmem_cache.size: slab caches' allocations go unseen".into());
    }
    if config.memcg_css == OFFSET_NONE && events.iter().any(|&(c, _)| c == "memcg") {
        events.retain(|&(c, _)| c != "memcg");
        degraded.push("this kernel's BTF has no mem_cgroup.css: memcg charges are not traced".into());
    }
}

/// The union of these gfp flags as the event's print format names them; 0 unless every one is named (in 32 bits).
fn gfp_mask(print_fmt: &str, flags: &[&str]) -> u32 {
    let masks: Option<Vec<u64>> = flags.iter().map(|flag| tracefs::print_fmt_flag(print_fmt, flag)).collect();
    masks.and_then(|m| u32::try_from(m.iter().fold(0, |a, b| a | b)).ok()).unwrap_or(0)
}

fn item(btf: &KernelBtf, enum_name: &str, variant: &str) -> i32 {
    btf.enum_value(enum_name, variant).and_then(|v| i32::try_from(v).ok()).unwrap_or(ITEM_NONE)
}

/// Offsets for task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id: how a program tells the memory cgroup of
/// the current task on v1 hierarchies, where the helper for the cgroup id only knows v2.
fn task_walk(btf: &KernelBtf, c: &mut Config) -> Result<()> {
    let need = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .ok_or_else(|| anyhow!("this kernel's BTF has no {s}.{m}, needed to tell which tasks belong to a cgroup"))
    };
    let memory_id = btf
        .enum_value("cgroup_subsys_id", "memory_cgrp_id")
        .ok_or_else(|| anyhow!("this kernel has no memory cgroup controller (no memory_cgrp_id in BTF)"))?;
    c.task_cgroups = need("task_struct", "cgroups")?;
    c.css_set_memory_subsys = need("css_set", "subsys")? + 8 * memory_id as u32;
    c.css_cgroup = need("cgroup_subsys_state", "cgroup")?;
    c.cgroup_kn = need("cgroup", "kn")?;
    c.kn_id = need("kernfs_node", "id")?;
    Ok(())
}

/// Where the programs find the user registers of the current task, and the `struct pt_regs` layout: the
/// `bpf_task_pt_regs` helper (5.15+, known by the kernel's helper enum in BTF), else the registers the entry code
/// saves at the top of the task's kernel stack. Returns how, for the mode's name.
fn user_registers(btf: &KernelBtf, c: &mut Config) -> Result<&'static str, String> {
    let member =
        |m: &str| btf.member_offset("pt_regs", m).ok_or_else(|| format!("no pt_regs.{m} in this kernel's BTF"));
    (c.regs_ip, c.regs_sp, c.regs_bp, c.regs_cs) = (member("ip")?, member("sp")?, member("bp")?, member("cs")?);
    // Only the fault addresses need these (`fault-address`).
    c.regs_orig_ax = btf.member_offset("pt_regs", "orig_ax").unwrap_or(OFFSET_NONE);
    c.regs_ss = btf.member_offset("pt_regs", "ss").unwrap_or(OFFSET_NONE);
    c.regs_gp = general_registers(|m| btf.member_offset("pt_regs", m));
    let helper = |name: &str| btf.enum_value("bpf_func_id", name).is_some();
    if helper("BPF_FUNC_task_pt_regs") && helper("BPF_FUNC_get_current_task_btf") {
        c.regs_source = leak_common::regs::HELPER;
        return Ok("task-pt-regs");
    }
    c.task_stack = btf.member_offset("task_struct", "stack").ok_or("no task_struct.stack in this kernel's BTF")?;
    c.pt_regs_size = btf.struct_size("pt_regs").ok_or("no struct pt_regs in this kernel's BTF")?;
    c.thread_size = thread_size();
    c.regs_source = leak_common::regs::STACK_TOP;
    Ok("stack-top")
}

/// Where the general registers start in `struct pt_regs`, if they lie there one after another in `GP_REG_NAMES`
/// order (the programs copy them in one read).
fn general_registers(offset: impl Fn(&str) -> Option<u32>) -> u32 {
    let Some(first) = offset(leak_common::GP_REG_NAMES[0]) else { return OFFSET_NONE };
    let in_order = leak_common::GP_REG_NAMES.iter().enumerate().all(|(i, m)| offset(m) == Some(first + 8 * i as u32));
    if in_order {
        first
    } else {
        OFFSET_NONE
    }
}

/// Where a task's TLS base (`thread.fsbase`, x86-64) lies in its `task_struct`: a thread's `pthread_t`, which
/// tells a Python thread's state apart from the others'.
fn task_fsbase(btf: &KernelBtf) -> Option<u32> {
    Some(btf.member_offset("task_struct", "thread")? + btf.member_offset("thread_struct", "fsbase")?)
}

/// THREAD_SIZE on x86-64: four pages, eight with KASAN (which doubles kernel stacks), as the kernel's config
/// says when it is readable; the programs check that the registers found there are user mode.
fn thread_size() -> u32 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).unwrap_or_default();
    let pages = if config.lines().any(|l| l == "CONFIG_KASAN=y") { 8 } else { 4 };
    pages * page_size()
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).unwrap_or(4096)
}

/// The pid of the kernel thread named `comm` (a child of kthreadd).
fn kernel_thread(comm: &str) -> Option<u32> {
    procfs::process::all_processes()
        .ok()?
        .filter_map(|p| p.ok())
        .find(|p| p.stat().is_ok_and(|s| s.comm == comm && s.ppid == 2))
        .map(|p| p.pid as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::testing::host_has;

    #[test]
    fn ignored_events_are_named_exactly() {
        let ignore = "memcg:mod_memcg_lruvec_state, oom:mark_victim";
        assert!(ignored(ignore, "oom", "mark_victim"));
        assert!(ignored(ignore, "memcg", "mod_memcg_lruvec_state"));
        assert!(!ignored(ignore, "kmem", "kmalloc"));
        assert!(!ignored("", "kmem", "kmalloc"));
    }

    #[test]
    fn a_refused_program_costs_its_modes_and_says_why() {
        let mut d = Discovery {
            config: Config::unset(),
            exit_config: ExitConfig::unset(),
            events: vec![],
            modes: ["pages", "slab", "oom-victim-rss"].map(String::from).to_vec(),
            degraded: vec![],
        };
        d.lose(&["oom-victim", "oom-victim-rss"], "oom:mark_victim is not traced: EPERM".into());
        assert_eq!(d.modes, ["pages", "slab"]);
        assert_eq!(d.degraded, ["oom:mark_victim is not traced: EPERM; lost: oom-victim-rss"]);
        d.lose(&["memcg-anon-charges"], "x".into());
        assert_eq!(d.degraded[1], "x");
    }

    fn layouts_of(event: &str) -> &'static [Layout] {
        RAW_EVENTS.iter().find(|e| e.event == event).unwrap().layouts
    }

    fn types(proto: &str) -> Vec<String> {
        proto.split(", ").map(String::from).collect()
    }

    #[test]
    fn general_registers_are_copied_only_when_in_pt_regs_order() {
        let names = leak_common::GP_REG_NAMES;
        let x86_64 = |m: &str| names.iter().position(|&n| n == m).map(|i| 8 * i as u32);
        assert_eq!(general_registers(x86_64), 0);
        let shifted = |m: &str| x86_64(m).map(|o| o + 16);
        assert_eq!(general_registers(shifted), 16);
        let swapped = |m: &str| {
            x86_64(match m {
                "ax" => "cx",
                "cx" => "ax",
                m => m,
            })
        };
        assert_eq!(general_registers(swapped), OFFSET_NONE);
        assert_eq!(general_registers(|m| if m == "di" { None } else { x86_64(m) }), OFFSET_NONE);
    }

    /// The prototypes of kernels 5.10 to 6.0, 6.1, and 6.2 on (include/trace/events/kmem.h).
    #[test]
    fn every_prototype_generation_matches_a_layout() {
        let cache_alloc = layouts_of("kmem_cache_alloc");
        let sized = types("long unsigned int, const void *, size_t, size_t, gfp_t");
        assert_eq!(matching(&sized, cache_alloc), Some(1));
        let v6_1 = types("long unsigned int, const void *, struct kmem_cache *, size_t, size_t, gfp_t, int");
        assert_eq!(matching(&v6_1, cache_alloc), Some(0), "the cache is preferred");
        let v6_2 = types("long unsigned int, const void *, struct kmem_cache *, gfp_t, int");
        assert_eq!(matching(&v6_2, cache_alloc), Some(0));
        let mut config = Config::unset();
        (cache_alloc[0].configure)(&mut config);
        assert_eq!(config.cache_alloc_has_cache, 1);
        for kmalloc in [&sized[..], &types("long unsigned int, const void *, size_t, size_t, gfp_t, int")[..]] {
            assert_eq!(matching(kmalloc, layouts_of("kmalloc")), Some(0), "{kmalloc:?}");
        }
        let memcg = types("struct mem_cgroup *, int, int");
        assert_eq!(matching(&memcg, layouts_of("mod_memcg_lruvec_state")), Some(0));
        let page = types("struct page *, unsigned int, gfp_t, int");
        assert_eq!(matching(&page, layouts_of("mm_page_alloc")), Some(0));
        let free = types("long unsigned int, const void *, const struct kmem_cache *");
        assert_eq!(matching(&free, layouts_of("kmem_cache_free")), Some(0));
    }

    #[test]
    fn a_prototype_that_moved_an_argument_matches_nothing() {
        assert_eq!(matching(&types("const void *, long unsigned int"), layouts_of("kfree")), None);
        assert_eq!(matching(&types("struct mem_cgroup *, int"), layouts_of("mod_memcg_lruvec_state")), None);
        assert_eq!(matching(&types("struct page *, unsigned int"), layouts_of("mm_page_alloc")), None);
        assert_eq!(matching(&[], layouts_of("kfree")), None);
    }

    #[test]
    fn gfp_masks_of_the_anon_fallback_come_from_the_print_format() {
        let format = tracefs::parse_format(
            "kmem",
            "mm_page_alloc",
            include_str!("../kernel/testdata/kmem_mm_page_alloc.format"),
        )
        .unwrap();
        let user = gfp_mask(&format.print_fmt, &["__GFP_HARDWALL", "__GFP_MOVABLE"]);
        let zero = gfp_mask(&format.print_fmt, &["__GFP_ZERO"]);
        assert_eq!(user.count_ones(), 2, "{user:#x}");
        assert!(zero.is_power_of_two() && user & zero == 0, "{zero:#x}");
        assert_eq!(gfp_mask(&format.print_fmt, &["__GFP_ZERO", "__GFP_NO_SUCH_FLAG"]), 0, "all or nothing");
        assert_eq!(gfp_mask("", &["__GFP_ZERO"]), 0);
    }

    /// On the real kernel: every allocation event's prototype is one the programs read, and the OOM record offsets
    /// are as tracefs says.
    #[test]
    fn discovers_this_kernel() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !host_has(root && std::path::Path::new("/sys/kernel/btf/vmlinux").exists(), "needs root and BTF") {
            return;
        }
        let d = discover(true, Some(4)).unwrap();
        assert!(d.modes.iter().any(|m| m == "pages" || m == "slab"), "{:?}", d.modes);
        for event in ["mm_page_alloc", "mm_page_free", "kmalloc", "kfree", "kmem_cache_alloc", "kmem_cache_free"] {
            assert!(d.has_event("kmem", event), "{event}: {:?}", d.degraded);
        }
        let tracefs = tracefs::tracefs_root().unwrap();
        if d.has_event("oom", "mark_victim") {
            let f = tracefs::read_format(&tracefs, "oom", "mark_victim").unwrap().unwrap();
            assert_eq!(d.config.victim_pid, f.field("pid").unwrap().offset);
        }
        assert_ne!(d.config.task_cgroups, OFFSET_NONE);
        assert_ne!(d.config.kn_id, OFFSET_NONE);
        assert!(d.config.page_size >= 4096);
        let khugepaged = std::path::Path::new("/sys/kernel/mm/transparent_hugepage/khugepaged").exists();
        assert_eq!(d.config.khugepaged_pid != 0, khugepaged, "khugepaged is found when the kernel has it");
        assert!(d.modes.iter().any(|m| m == "exit-senders"), "{:?}", d.degraded);
        assert_ne!(d.exit_config.task_exit_code, OFFSET_NONE);
        assert_ne!(d.config.regs_source, leak_common::regs::NONE, "{:?}", d.degraded);
        assert_ne!(d.config.regs_sp, OFFSET_NONE);
        assert!(d.modes.iter().any(|m| m == "fault-address"), "{:?}", d.degraded);
        assert_ne!(d.config.regs_gp, OFFSET_NONE, "x86-64's pt_regs starts with r15 .. di");
        for event in ["sched_process_fork", "sched_process_exec"] {
            assert!(d.has_event("sched", event), "{event}: {:?}", d.degraded);
        }
        let record_all = discover(true, None).unwrap();
        assert!(record_all.config.ustack_chunks == 0, "--record-all takes no copies");
        assert_ne!(record_all.config.regs_source, leak_common::regs::NONE, "it keys kernel stack reuse by the user ip");
        assert_eq!(record_all.config.regs_gp, OFFSET_NONE, "nor the registers of the faults they would carry");
    }
}
