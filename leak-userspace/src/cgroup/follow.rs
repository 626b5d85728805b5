//! Following a container through its restarts. An OOM-killed container that its runtime restarts lives in a new
//! cgroup (Docker's cgroupfs driver reuses the path, but the directory, and so the memcg id, is new), and one trace
//! should capture the whole sawtooth of kills. Plain cgroup targets are not followed: their trace ends when the
//! cgroup is removed.
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use super::docker::{Daemon, Lookup};
use super::{container, CgroupLayout, Target};
use crate::report::{Container, FollowedCgroup};

/// How long a container may stay without a cgroup before the trace ends: Docker backs off restarts up to a minute.
pub(super) const RESTART_WAIT: Duration = Duration::from_secs(90);
/// `docker restart` passes through "exited" for a moment; only a container that stays stopped is gone for good.
const STOPPED_GRACE: Duration = Duration::from_secs(3);

/// What a poll found.
#[derive(Debug, PartialEq)]
pub enum Poll {
    /// The target is still there.
    Same,
    /// The container was restarted; the target now names its new cgroup.
    Moved,
    /// The container has no cgroup right now (restarting); keep waiting.
    Waiting,
    /// Nothing more to trace; why.
    Gone(String),
}

pub struct Follower {
    /// `None` for plain cgroup targets, which are not followed.
    layout: Option<CgroupLayout>,
    start: Instant,
    /// Since when the container has had no cgroup.
    missing_since: Option<Instant>,
    cgroups: Vec<FollowedCgroup>,
    /// What happened, for the live view: restarts followed and the end.
    notes: Vec<String>,
}

impl Follower {
    pub fn new(target: &Target) -> Self {
        let layout = target.container.as_ref().and_then(|_| CgroupLayout::detect().ok());
        let first = FollowedCgroup { t: 0.0, cgroup_path: target.path.display().to_string(), cgroup_id: target.id };
        Follower { layout, start: Instant::now(), missing_since: None, cgroups: vec![first], notes: Vec::new() }
    }

    /// Every cgroup traced so far, the first one included.
    pub fn cgroups(&self) -> &[FollowedCgroup] {
        &self.cgroups
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Checks that `target` still names a live cgroup; moves it to a restarted container's new cgroup.
    pub fn poll(&mut self, target: &mut Target) -> Poll {
        let live_id = live_cgroup_id(&target.path);
        let (Some(layout), Some(container)) = (self.layout.as_ref(), target.container.as_mut()) else {
            return match live_id {
                Some(_) => Poll::Same,
                None => Poll::Gone("the target cgroup was removed".into()),
            };
        };
        if live_id == Some(target.id) {
            self.missing_since = None;
            return Poll::Same;
        }
        let missing_since = *self.missing_since.get_or_insert_with(Instant::now);
        let found = match locate(container, layout, missing_since) {
            Ok(found) => found,
            Err(gone) => return self.gone(gone),
        };
        let Some(dir) = found else {
            if missing_since.elapsed() > RESTART_WAIT {
                let name = label(container);
                return self.gone(format!("container {name} did not come back within {} s", RESTART_WAIT.as_secs()));
            }
            return Poll::Waiting;
        };
        let Ok(moved) = Target::from_dir(&dir, target.version) else { return Poll::Waiting };
        self.missing_since = None;
        target.path = moved.path;
        target.id = moved.id;
        let t = self.start.elapsed().as_secs_f64();
        let note = format!(
            "container {} restarted (restart count {}): now tracing cgroup id {}",
            label(container),
            container.restart_count.map_or("?".into(), |n| n.to_string()),
            target.id
        );
        self.notes.push(note);
        self.cgroups.push(FollowedCgroup { t, cgroup_path: target.path.display().to_string(), cgroup_id: target.id });
        Poll::Moved
    }

    /// Brings the runtime's facts about the container up to date (restart count, last exit), for the report.
    pub fn refresh(&self, target: &mut Target) {
        if let (Some(_), Some(container)) = (self.layout.as_ref(), target.container.as_mut()) {
            if let Some(Lookup::Found(inspect)) = ask_docker(container) {
                update(container, inspect.container());
            }
        }
    }

    fn gone(&mut self, why: String) -> Poll {
        self.notes.push(why.clone());
        Poll::Gone(why)
    }
}

/// The memcg id of `path` if it is a cgroup now.
fn live_cgroup_id(path: &std::path::Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    path.join("cgroup.procs").exists().then(|| meta.ino())
}

/// Where the container's cgroup is now: `Ok(None)` while it has none, `Err(why)` when it will not have one again.
/// The daemon is asked when the container is Docker's; without it, the cgroup tree is searched for its id.
fn locate(
    container: &mut Container,
    layout: &CgroupLayout,
    missing_since: Instant,
) -> Result<Option<std::path::PathBuf>, String> {
    match ask_docker(container) {
        Some(Lookup::Found(inspect)) => {
            update(container, inspect.container());
            let state = &inspect.state;
            if state.running || state.restarting || missing_since.elapsed() < STOPPED_GRACE {
                return Ok(inspect.cgroup_dir(layout));
            }
            Err(format!("container {} stopped for good ({})", label(container), inspect.describe_state()))
        }
        Some(Lookup::NotFound) => Err(format!("container {} was removed", label(container))),
        Some(Lookup::Unreachable(_)) | None => match container::find(layout, &container.id).as_slice() {
            [one] => Ok(Some(one.dir.clone())),
            _ => Ok(None),
        },
    }
}

fn ask_docker(container: &Container) -> Option<Lookup> {
    if container.runtime != "docker" {
        return None;
    }
    Daemon::from_env().ok()?.inspect(&container.id).ok()
}

/// Takes the runtime's new facts, keeping the last exit seen when the container runs again (Docker reports 0
/// for a running container).
fn update(container: &mut Container, fresh: Container) {
    let last_exit = fresh.last_exit_code.or(container.last_exit_code);
    *container = Container { last_exit_code: last_exit, ..fresh };
}

fn label(c: &Container) -> String {
    if c.name.is_empty() {
        container::short_id(&c.id)
    } else {
        c.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupVersion;
    use std::fs;

    const ID: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

    fn mkcg(dir: &std::path::Path) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
    }

    /// A containerd container (no daemon is asked) whose cgroup is removed and made again, as on a restart.
    #[test]
    fn follows_a_container_cgroup_made_again() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("memory");
        let dir = root.join(format!("kubepods.slice/pod1/cri-containerd-{ID}.scope"));
        mkcg(&root);
        mkcg(&dir);
        let layout = CgroupLayout { memory_root: root.clone(), version: CgroupVersion::V1, unified: None };
        let found = container::find(&layout, ID).pop().unwrap();
        let mut target = Target::from_dir(&found.dir, CgroupVersion::V1).unwrap();
        target.container = Some(found.container());
        let mut follower = Follower::new(&target);
        follower.layout = Some(layout);
        assert_eq!(follower.poll(&mut target), Poll::Same);

        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(follower.poll(&mut target), Poll::Waiting);
        // Made again, under another pod slice: found by its id, with a new inode.
        let again = root.join(format!("kubepods.slice/pod2/cri-containerd-{ID}.scope"));
        mkcg(&again);
        assert_eq!(follower.poll(&mut target), Poll::Moved);
        assert_eq!(target.path, again);
        assert_eq!(target.id, fs::metadata(&again).unwrap().ino());
        assert_eq!(follower.cgroups().len(), 2);
        assert_eq!(follower.cgroups()[1].cgroup_id, target.id);
        assert!(follower.notes()[0].starts_with("container c0ffee00c0ff restarted"), "{:?}", follower.notes());
        assert_eq!(follower.poll(&mut target), Poll::Same);

        // Gone for longer than a restart can take.
        fs::remove_dir_all(&again).unwrap();
        assert_eq!(follower.poll(&mut target), Poll::Waiting);
        follower.missing_since = Some(Instant::now() - RESTART_WAIT - Duration::from_secs(1));
        assert!(matches!(follower.poll(&mut target), Poll::Gone(why) if why.contains("did not come back")));
    }

    #[test]
    fn plain_cgroups_end_when_removed() {
        let t = tempfile::tempdir().unwrap();
        mkcg(t.path());
        let mut target = Target::from_dir(t.path(), CgroupVersion::V2).unwrap();
        let mut follower = Follower::new(&target);
        assert_eq!(follower.poll(&mut target), Poll::Same);
        fs::remove_file(t.path().join("cgroup.procs")).unwrap();
        assert_eq!(follower.poll(&mut target), Poll::Gone("the target cgroup was removed".into()));
    }

    #[test]
    fn last_exit_survives_a_running_refresh() {
        let mut c = container::Found { dir: "/x".into(), id: ID.into(), runtime: "docker" }.container();
        c.last_exit_code = Some(137);
        let running = Container { restart_count: Some(3), last_exit_code: None, ..c.clone() };
        update(&mut c, running);
        assert_eq!((c.restart_count, c.last_exit_code), (Some(3), Some(137)));
        let exited = Container { last_exit_code: Some(1), ..c.clone() };
        update(&mut c, exited);
        assert_eq!(c.last_exit_code, Some(1));
    }
}
