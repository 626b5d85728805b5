//! Discovers what the programs need to know about the running kernel: tracepoint record layouts from tracefs
//! `format` files, memcg item numbers and struct offsets from BTF. Nothing is assumed about a kernel version.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use leak_common::{Config, ITEM_NONE, OFFSET_NONE};

use crate::kernel::{btf::KernelBtf, tracefs, EventFormat};

/// What this kernel offers, and how the programs are configured for it.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub config: Config,
    /// The tracepoints present with every field the programs need, and their layouts.
    events: Events,
    /// Attribution paths that will be active, for the user and for report.json `kernel.modes`.
    pub modes: Vec<String>,
    /// One line per missing capability: what is missing and what that costs.
    pub degraded: Vec<String>,
}

impl Discovery {
    pub fn has_event(&self, category: &str, event: &str) -> bool {
        lookup(&self.events, category, event).is_some()
    }

    /// Records that `modes` cannot be active after all (a program the kernel refused), and why.
    pub fn lose(&mut self, modes: &[&str], why: String) {
        let lost: Vec<String> = self.modes.iter().filter(|m| modes.contains(&m.as_str())).cloned().collect();
        self.modes.retain(|m| !lost.contains(m));
        self.degraded.push(if lost.is_empty() { why } else { format!("{why}; lost: {}", lost.join(", ")) });
    }
}

type Events = BTreeMap<(&'static str, &'static str), EventFormat>;

fn lookup<'a>(events: &'a Events, category: &str, event: &str) -> Option<&'a EventFormat> {
    events.iter().find(|((c, e), _)| *c == category && *e == event).map(|(_, f)| f)
}

/// Where a tracepoint field's offset goes in the config.
type Slot = fn(&mut Config) -> &mut u32;

/// A tracepoint whose fields the programs read: it counts as present only when every required field exists.
struct Wanted {
    category: &'static str,
    event: &'static str,
    /// (field, required, where its offset goes)
    fields: &'static [(&'static str, bool, Slot)],
}

const WANTED: &[Wanted] = &[
    Wanted {
        category: "kmem",
        event: "mm_page_alloc",
        fields: &[
            ("pfn", true, |c| &mut c.page_alloc_pfn),
            ("order", true, |c| &mut c.page_alloc_order),
            ("gfp_flags", false, |c| &mut c.page_alloc_gfp),
        ],
    },
    Wanted {
        category: "kmem",
        event: "mm_page_free",
        fields: &[("pfn", true, |c| &mut c.page_free_pfn), ("order", false, |c| &mut c.page_free_order)],
    },
    Wanted {
        category: "kmem",
        event: "kmalloc",
        fields: &[("ptr", true, |c| &mut c.kmalloc_ptr), ("bytes_alloc", true, |c| &mut c.kmalloc_bytes_alloc)],
    },
    Wanted { category: "kmem", event: "kfree", fields: &[("ptr", true, |c| &mut c.kfree_ptr)] },
    Wanted {
        category: "kmem",
        event: "kmem_cache_alloc",
        fields: &[
            ("ptr", true, |c| &mut c.cache_alloc_ptr),
            ("bytes_alloc", true, |c| &mut c.cache_alloc_bytes_alloc),
            // Kernels before 6.2 do not name the cache here.
            ("name", false, |c| &mut c.cache_alloc_name),
        ],
    },
    Wanted { category: "kmem", event: "kmem_cache_free", fields: &[("ptr", true, |c| &mut c.cache_free_ptr)] },
    Wanted {
        category: "memcg",
        event: "mod_memcg_lruvec_state",
        fields: &[
            ("id", true, |c| &mut c.lruvec_id),
            ("item", true, |c| &mut c.lruvec_item),
            ("val", true, |c| &mut c.lruvec_val),
        ],
    },
    Wanted {
        category: "memcg",
        event: "mod_memcg_state",
        fields: &[
            ("id", true, |c| &mut c.state_id),
            ("item", true, |c| &mut c.state_item),
            ("val", true, |c| &mut c.state_val),
        ],
    },
    Wanted {
        category: "oom",
        event: "mark_victim",
        // Kernels before ~6.9 carry only the pid.
        fields: &[
            ("pid", true, |c| &mut c.victim_pid),
            ("comm", false, |c| &mut c.victim_comm),
            ("total_vm", false, |c| &mut c.victim_total_vm),
            ("anon_rss", false, |c| &mut c.victim_anon_rss),
            ("file_rss", false, |c| &mut c.victim_file_rss),
            ("shmem_rss", false, |c| &mut c.victim_shmem_rss),
        ],
    },
];

/// Events that older kernels (before 6.1) split off for NUMA-node allocations, with the layout of the event the same
/// program reads: (event, its twin in WANTED). Without them those allocations would go unseen.
pub const NODE_VARIANTS: &[(&str, &str)] =
    &[("kmalloc_node", "kmalloc"), ("kmem_cache_alloc_node", "kmem_cache_alloc")];

/// Tracepoints to treat as absent, `category:event` separated by commas: runs the fallback paths of older kernels on
/// a kernel that has everything (the e2e tests compare both on one kernel).
pub const IGNORE_EVENTS_ENV: &str = "LEAKTRACE_IGNORE_EVENTS";

fn ignored(ignore: &str, category: &str, event: &str) -> bool {
    ignore.split(',').any(|e| e.trim() == format!("{category}:{event}"))
}

pub fn discover() -> Result<Discovery> {
    let root = tracefs::tracefs_root()?;
    let btf = KernelBtf::load()?;
    let mut config = Config::unset();
    let mut events = BTreeMap::new();
    let mut degraded = Vec::new();
    let ignore = std::env::var(IGNORE_EVENTS_ENV).unwrap_or_default();

    for w in WANTED {
        if ignored(&ignore, w.category, w.event) {
            degraded.push(format!("tracepoint {}:{} is ignored ({IGNORE_EVENTS_ENV})", w.category, w.event));
            continue;
        }
        let Some(format) = tracefs::read_format(&root, w.category, w.event)? else {
            degraded.push(format!("tracepoint {}:{} is absent", w.category, w.event));
            continue;
        };
        let missing = w.fields.iter().find(|(name, required, _)| *required && format.field(name).is_none());
        if let Some((name, ..)) = missing {
            degraded.push(format!("tracepoint {}:{} has no field `{name}`", w.category, w.event));
            continue;
        }
        for (name, _, slot) in w.fields {
            *slot(&mut config) = format.field(name).map_or(OFFSET_NONE, |f| f.offset);
        }
        events.insert((w.category, w.event), format);
    }

    for (variant, twin) in NODE_VARIANTS {
        let (Some(format), Some(base)) = (tracefs::read_format(&root, "kmem", variant)?, lookup(&events, "kmem", twin))
        else {
            continue;
        };
        let same_layout = base.fields.iter().all(|f| format.field(&f.name).is_some_and(|v| v.offset == f.offset));
        if same_layout {
            events.insert(("kmem", variant), format);
        } else {
            degraded.push(format!("kmem:{variant} differs in layout from kmem:{twin}: its allocations go unseen"));
        }
    }

    config.item_anon_mapped = item(&btf, "node_stat_item", "NR_ANON_MAPPED");
    config.item_kmem = item(&btf, "memcg_stat_item", "MEMCG_KMEM");
    task_walk(&btf, &mut config)?;
    config.page_size = page_size();
    config.oom_reaper_pid = oom_reaper_pid().unwrap_or(0);

    // The gfp bit that marks memory charged to a memcg, from the page allocation event's own flag table.
    let page_alloc_fmt = lookup(&events, "kmem", "mm_page_alloc").map_or(String::new(), |f| f.print_fmt.clone());
    let gfp = |flags: &[&str]| gfp_mask(&page_alloc_fmt, flags);
    config.gfp_account = gfp(&["__GFP_ACCOUNT"]);
    let has = |c: &str, e: &str| lookup(&events, c, e).is_some();
    let mut modes = Vec::new();
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
    if has("memcg", "mod_memcg_lruvec_state") && config.item_anon_mapped != ITEM_NONE {
        modes.push("memcg-anon-charges".to_string());
    } else {
        config.gfp_user = gfp(&["__GFP_HARDWALL", "__GFP_MOVABLE"]);
        config.gfp_zero = gfp(&["__GFP_ZERO"]);
        config.gfp_thp = gfp(&["__GFP_COMP", "__GFP_NOMEMALLOC"]);
        if config.gfp_user != 0
            && config.gfp_zero != 0
            && config.gfp_account != 0
            && config.page_alloc_gfp != OFFSET_NONE
        {
            modes.push("gfp-anon".to_string());
            degraded.push(
                "no memcg:mod_memcg_lruvec_state: anon pages are told by their gfp flags (zeroed user pages, huge \
                 pages); copy-on-write copies after fork count as `other`"
                    .to_string(),
            );
        } else {
            config.gfp_user = 0;
            degraded.push(
                "no memcg:mod_memcg_lruvec_state and no usable gfp flags: anon pages are reported as `other` sites"
                    .to_string(),
            );
        }
    }
    if has("kmem", "kmem_cache_alloc") && config.cache_alloc_name == OFFSET_NONE {
        degraded.push(
            "kmem:kmem_cache_alloc has no cache name (before 6.2): slab sites of named caches are unnamed".into(),
        );
    }
    if has("memcg", "mod_memcg_state") && config.item_kmem != ITEM_NONE {
        modes.push("memcg-kmem-charges".to_string());
    }
    if has("oom", "mark_victim") {
        modes.push(if config.victim_anon_rss != OFFSET_NONE { "oom-victim-rss" } else { "oom-victim" }.to_string());
    } else {
        degraded.push("no oom:mark_victim: OOM kills are only counted from memory.oom_control / memory.events".into());
    }
    if has("kmem", "mm_page_alloc") && (config.gfp_account == 0 || config.page_alloc_gfp == OFFSET_NONE) {
        degraded.push(
            "cannot read __GFP_ACCOUNT of page allocations: page cache pages count as kernel `page` sites".into(),
        );
    }
    if config.oom_reaper_pid == 0 {
        degraded.push("no oom_reaper thread found: its frees count as ordinary frees".into());
    }
    Ok(Discovery { config, events, modes, degraded })
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

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).unwrap_or(4096)
}

fn oom_reaper_pid() -> Option<u32> {
    procfs::process::all_processes()
        .ok()?
        .filter_map(|p| p.ok())
        .find(|p| p.stat().is_ok_and(|s| s.comm == "oom_reaper" && s.ppid == 2))
        .map(|p| p.pid as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::testing::host_has;

    #[test]
    fn ignored_events_are_named_exactly() {
        let ignore = "memcg:mod_memcg_lruvec_state, memcg:mod_memcg_state";
        assert!(ignored(ignore, "memcg", "mod_memcg_state"));
        assert!(ignored(ignore, "memcg", "mod_memcg_lruvec_state"));
        assert!(!ignored(ignore, "kmem", "kmalloc"));
        assert!(!ignored("", "kmem", "kmalloc"));
    }

    #[test]
    fn a_refused_program_costs_its_modes_and_says_why() {
        let mut d = Discovery {
            config: Config::unset(),
            events: Events::new(),
            modes: ["pages", "slab", "oom-victim-rss"].map(String::from).to_vec(),
            degraded: vec![],
        };
        d.lose(&["oom-victim", "oom-victim-rss"], "oom:mark_victim is not traced: EPERM".into());
        assert_eq!(d.modes, ["pages", "slab"]);
        assert_eq!(d.degraded, ["oom:mark_victim is not traced: EPERM; lost: oom-victim-rss"]);
        d.lose(&["memcg-kmem-charges"], "x".into());
        assert_eq!(d.degraded[1], "x");
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

    /// On the real kernel: every offset the programs use agrees with the tracefs format file it came from.
    #[test]
    fn discovers_this_kernel() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !host_has(root && std::path::Path::new("/sys/kernel/btf/vmlinux").exists(), "needs root and BTF") {
            return;
        }
        let d = discover().unwrap();
        assert!(d.modes.iter().any(|m| m == "pages" || m == "slab"), "{:?}", d.modes);
        let tracefs = tracefs::tracefs_root().unwrap();
        if d.has_event("kmem", "kmalloc") {
            let f = tracefs::read_format(&tracefs, "kmem", "kmalloc").unwrap().unwrap();
            assert_eq!(d.config.kmalloc_ptr, f.field("ptr").unwrap().offset);
            assert_eq!(d.config.kmalloc_bytes_alloc, f.field("bytes_alloc").unwrap().offset);
        }
        if d.has_event("oom", "mark_victim") {
            let f = tracefs::read_format(&tracefs, "oom", "mark_victim").unwrap().unwrap();
            assert_eq!(d.config.victim_pid, f.field("pid").unwrap().offset);
        }
        assert_ne!(d.config.task_cgroups, OFFSET_NONE);
        assert_ne!(d.config.kn_id, OFFSET_NONE);
        assert!(d.config.page_size >= 4096);
    }
}
