//! `heap` sites from a runtime's own sampled heap profile (Go's, V8's): its stacks merged by function (one leak,
//! one site), each named by its first application frame.
use std::collections::{BTreeMap, HashMap};

use crate::{
    report::{Frame, Site},
    sites::app_frame,
};

/// What one stack of a profile stands for, scaled from its samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Held {
    pub inuse_bytes: f64,
    pub inuse_objects: f64,
    pub alloc_bytes: f64,
    pub alloc_objects: f64,
}

#[derive(Default)]
pub struct ProfileSites<'a> {
    merged: BTreeMap<Vec<(String, Option<String>)>, Site>,
    comms: Option<&'a HashMap<u32, String>>,
}

impl<'a> ProfileSites<'a> {
    pub fn new(comms: &'a HashMap<u32, String>) -> Self {
        ProfileSites { merged: BTreeMap::new(), comms: Some(comms) }
    }

    /// One stack of process `pid`'s profile; a process no longer `alive` holds nothing any more, and its sites
    /// keep what they allocated.
    pub fn add(&mut self, pid: u32, alive: bool, frames: &[Frame], held: Held) {
        let key = frames.iter().map(|f| (f.label().to_string(), f.file.clone())).collect();
        let site = self.merged.entry(key).or_insert_with(|| Site {
            kind: "heap".into(),
            frames: frames.to_vec(),
            ..Default::default()
        });
        if alive {
            site.outstanding_bytes += held.inuse_bytes.round() as i64;
            site.outstanding_allocs += held.inuse_objects.round() as i64;
        }
        site.alloc_bytes += held.alloc_bytes.round() as u64;
        site.alloc_count += held.alloc_objects.round() as u64;
        if !site.pids.contains(&pid) {
            site.pids.push(pid);
            site.comms.extend(self.comms.and_then(|c| c.get(&pid)).cloned());
        }
    }

    pub fn into_sites(self) -> Vec<Site> {
        self.merged
            .into_values()
            .map(|mut s| {
                s.label = app_frame(&s).map(|f| f.label().to_string());
                s
            })
            .collect()
    }
}
