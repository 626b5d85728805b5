//! Helpers for leaktrace's end-to-end tests: real memcgs, real leaking C workloads (tests/workloads), the real
//! binary. Privileged tests call `require_root()` first and take `serial()`: they check the kernel for leftover
//! programs, which only works when one trace runs at a time.
use std::{
    collections::HashSet,
    ffi::{CString, OsStr},
    fs,
    io::{self, BufRead, BufReader, Read},
    os::unix::{
        ffi::OsStrExt,
        fs::MetadataExt,
        process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex, MutexGuard, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

pub mod containerd;
pub mod dockerd;
pub mod image;
pub mod prometheus;
pub mod scenarios;

use scenarios::Scenario;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// Prefix of every eBPF program leaktrace loads (as `bpftool prog show` lists them).
pub const PROGRAM_PREFIX: &str = "lt_";

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate lives one level below the workspace root")
}

/// Whether a privileged test can run. Under CI (`CI=true`) not being root is a failure, so the suite cannot pass by
/// skipping everything; elsewhere the test is skipped with a note.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "privileged tests must run under CI (as root)");
    eprintln!("skipped: needs root (eBPF programs and cgroups)");
    false
}

/// Held for the whole of a privileged test: one trace at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A memory cgroup made for one test; on drop its processes are killed and it is removed.
#[derive(Debug)]
pub struct Memcg {
    path: PathBuf,
    version: CgroupVersion,
}

impl Memcg {
    /// Creates `<memory root>/leaktrace-test-<prefix>-<pid>-<n>`, with a memory limit if given.
    pub fn create(prefix: &str, limit_bytes: Option<u64>) -> Result<Memcg> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let (root, version) = memory_root()?;
        let name =
            format!("leaktrace-test-{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let path = root.join(name);
        fs::create_dir(&path).with_context(|| format!("cannot create the memcg {}", path.display()))?;
        let memcg = Memcg { path, version };
        if version == CgroupVersion::V2 && !memcg.path.join("memory.max").exists() {
            bail!("the memory controller is not enabled in {}/cgroup.subtree_control", root.display());
        }
        if let Some(limit) = limit_bytes {
            memcg.write(memcg.file("memory.limit_in_bytes", "memory.max"), &limit.to_string())?;
            // Without swap the limit is what the OOM killer enforces; with swap a v2 child would page out instead.
            if version == CgroupVersion::V2 && memcg.path.join("memory.swap.max").exists() {
                memcg.write("memory.swap.max", "0")?;
            }
        }
        Ok(memcg)
    }

    /// A memcg below this one, named `name` (e.g. after a container id); removed on drop like any. It must be
    /// dropped before its parent.
    pub fn child(&self, name: &str) -> Result<Memcg> {
        if self.version == CgroupVersion::V2 {
            self.write("cgroup.subtree_control", "+memory")?;
        }
        let path = self.path.join(name);
        fs::create_dir(&path).with_context(|| format!("cannot create the memcg {}", path.display()))?;
        Ok(Memcg { path, version: self.version })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The cgroup id: the directory's inode number (what `--cgroup <id>` and the memcg tracepoints use).
    pub fn id(&self) -> Result<u64> {
        Ok(fs::metadata(&self.path).with_context(|| format!("cannot stat {}", self.path.display()))?.ino())
    }

    /// Current memory usage in bytes.
    pub fn usage(&self) -> Result<u64> {
        let file = self.path.join(self.file("memory.usage_in_bytes", "memory.current"));
        let text = fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        text.trim().parse().with_context(|| format!("{}: not a number: {text:?}", file.display()))
    }

    /// Pids of the processes in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        procs.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Starts `cmd` inside the cgroup: the child moves itself in before exec, so everything it runs is charged here.
    pub fn spawn_in(&self, mut cmd: Command) -> Result<Child> {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())?;
        // SAFETY: the closure runs between fork and exec and only makes raw syscalls (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0" is the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if written == 1 {
                    Ok(())
                } else {
                    Err(err)
                }
            });
        }
        cmd.spawn().with_context(|| format!("cannot start {:?} in {}", cmd.get_program(), self.path.display()))
    }

    fn file(&self, v1: &'static str, v2: &'static str) -> &'static str {
        match self.version {
            CgroupVersion::V1 => v1,
            CgroupVersion::V2 => v2,
        }
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.path.join(file);
        fs::write(&path, value).with_context(|| format!("cannot write {value} to {}", path.display()))
    }
}

impl Drop for Memcg {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Where memory cgroups are made: the cgroup2 root when it has the memory controller, else the v1 hierarchy.
fn memory_root() -> Result<(PathBuf, CgroupVersion)> {
    let unified = Path::new("/sys/fs/cgroup");
    let controllers = fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "memory") {
        return Ok((unified.to_path_buf(), CgroupVersion::V2));
    }
    let v1 = unified.join("memory");
    if v1.join("cgroup.procs").exists() {
        return Ok((v1, CgroupVersion::V1));
    }
    bail!("no memory cgroup controller: neither cgroup2 at /sys/fs/cgroup nor v1 at /sys/fs/cgroup/memory has it")
}

/// The workloads written around frame-pointer walks (tests/workloads/frame_pointers.h: the leaking function is
/// always the leaf of the stack) and the others that predate the ordinary ones: built with frame pointers, so user
/// stacks walk through them. Every other workload is built as distributions build programs (`-O2 -g`, the compilers'
/// default of no frame pointers): see `build_workload`.
pub const FRAME_POINTER_WORKLOADS: &[&str] =
    &["heap_leak", "pipe_leak", "oom_leak", "churn", "working_set", "thread_leak", "cache_growth", "bench_churn"];

/// Shared libraries a workload links against: tests/workloads/lib<name>.c, built into lib<name>.so beside the
/// executable, which finds it there through its rpath (and the VM guest copies it, as ldd lists it).
fn workload_libraries(name: &str) -> &'static [&'static str] {
    match name {
        "session_cache" => &["sessioncache"],
        _ => &[],
    }
}

/// Workloads built from another's source with more linker arguments: (name, source workload, arguments).
const VARIANTS: &[(&str, &str, &[&str])] = &[
    ("render_sessions_jemalloc", "render_sessions", &["-ljemalloc"]),
    ("session_store_jemalloc", "session_store", &["-ljemalloc"]),
];

/// Compiles the workload tests/workloads/<name>.c, .cc (g++) or .rs (rustc) and returns the executable. The
/// frame-pointer variants (`FRAME_POINTER_WORKLOADS`) are built with frame pointers, the rest with release defaults
/// and debug info: C and C++ with `-O2 -g`, Rust with `rustc -O -g`, and their shared libraries with `-fPIC`.
/// Rebuilt only when a workload source is newer.
pub fn build_workload(name: &str) -> Result<PathBuf> {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
    let (source, link) = VARIANTS.iter().find(|v| v.0 == name).map_or((name, &[][..]), |v| (v.1, v.2));
    let (ext, src) = ["c", "cc", "rs", "go"]
        .into_iter()
        .map(|ext| (ext, sources.join(format!("{source}.{ext}"))))
        .find(|(_, src)| src.is_file())
        .with_context(|| format!("no workload {name} (.c, .cc, .rs or .go) in {}", sources.display()))?;
    let out_dir = workspace().join("target/e2e-workloads");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let exe = out_dir.join(name);
    let newest_source = fs::read_dir(&sources)?
        .flatten()
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .max()
        .context("empty workloads directory")?;
    if fs::metadata(&exe).and_then(|m| m.modified()).is_ok_and(|built| built >= newest_source) {
        return Ok(exe);
    }
    for lib in workload_libraries(name) {
        let mut cc = Command::new("gcc");
        cc.args(["-O2", "-g", "-Wall", "-fPIC", "-shared"]).arg(sources.join(format!("lib{lib}.c")));
        compile(cc, &out_dir.join(format!("lib{lib}.so")), &[])?;
    }
    if ext == "go" {
        // Go's own defaults (no module, no network); its build cache beside the workloads.
        let mut go = Command::new("go");
        go.arg("build").env("GO111MODULE", "off").env("GOCACHE", out_dir.join("go-cache")).env("GOTOOLCHAIN", "local");
        compile(go, &exe, &[src.as_os_str()])?;
        return Ok(exe);
    }
    let cmd = if ext == "rs" {
        let mut rustc = Command::new(rustc());
        rustc.args(["-O", "-g", "--edition", "2021"]).arg(&src);
        rustc
    } else {
        let mut cc = Command::new(if ext == "cc" { "g++" } else { "gcc" });
        if FRAME_POINTER_WORKLOADS.contains(&name) {
            cc.args(["-O1", "-g", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"]);
        } else {
            cc.args(["-O2", "-g"]);
        }
        cc.arg("-Wall").arg(&src).args(link);
        for lib in workload_libraries(name) {
            cc.arg("-L").arg(&out_dir).arg(format!("-l{lib}")).arg(format!("-Wl,-rpath,{}", out_dir.display()));
        }
        cc
    };
    compile(cmd, &exe, &[])?;
    Ok(exe)
}

/// Runs a compiler command with `-o <a temporary name>`, then the `sources` that must follow it (`go build`'s), and
/// renames the result to `out`: tests running in parallel never see a half-written file.
fn compile(mut cmd: Command, out: &Path, sources: &[&OsStr]) -> Result<()> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let file_name = out.file_name().context("no file name")?.to_string_lossy();
    let tmp =
        out.with_file_name(format!(".{file_name}.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let compiler = cmd.get_program().to_string_lossy().into_owned();
    let output =
        cmd.arg("-o").arg(&tmp).args(sources).output().with_context(|| {
            format!("cannot run {compiler} (cargo xtask bootstrap installs gcc, g++ and golang-go)")
        })?;
    if !output.status.success() {
        bail!("{} failed:\n{}", display_command(&cmd), String::from_utf8_lossy(&output.stderr));
    }
    fs::rename(&tmp, out)?;
    Ok(())
}

fn display_command(cmd: &Command) -> String {
    let args: Vec<_> = cmd.get_args().map(OsStr::to_string_lossy).collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

/// The rustc of the toolchain running the tests (beside `$CARGO`, which cargo sets for the tests it runs and for
/// xtask), not Debian's rustc-web that builds the eBPF programs; plain `rustc` from PATH otherwise.
fn rustc() -> PathBuf {
    std::env::var_os("CARGO")
        .map(|cargo| PathBuf::from(cargo).with_file_name("rustc"))
        .filter(|rustc| rustc.is_file())
        .unwrap_or_else(|| PathBuf::from("rustc"))
}

/// The leaktrace binary under test: `$LEAKTRACE_BIN`, else the workspace's release build.
pub fn leaktrace_bin() -> Result<PathBuf> {
    let bin = std::env::var_os("LEAKTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/leaktrace"));
    if !bin.is_file() {
        bail!("no leaktrace binary at {}: run `cargo xtask test` (it builds one) or set LEAKTRACE_BIN", bin.display());
    }
    Ok(bin)
}

/// The sampling rate of the scenario and diagnosis traces. Their leaks are small and short (tens of MiB in
/// seconds): at the default rate (512 KiB) they would get ~100 samples, a +-10 % spread that tight coverage bounds
/// fail now and then. Sampling works alike at every rate; the demo's e2e test runs the default one.
pub const SCENARIO_SAMPLE_BYTES: &str = "65536";

/// A running leaktrace whose output is collected (and echoed to the test's stderr) line by line.
pub struct Leaktrace {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    attached: mpsc::Receiver<()>,
}

impl Leaktrace {
    pub fn spawn<S: AsRef<OsStr>>(args: &[S]) -> Result<Leaktrace> {
        Leaktrace::start(args, &[], true)
    }

    /// `spawn` with extra environment variables (e.g. DOCKER_HOST for a test's own daemon).
    pub fn spawn_with_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &OsStr)]) -> Result<Leaktrace> {
        Leaktrace::start(args, env, true)
    }

    /// As `spawn`; with `echo` false leaktrace's lines are collected without being copied to stderr (the benchmark
    /// starts it hundreds of times).
    pub fn spawn_echoing<S: AsRef<OsStr>>(args: &[S], echo: bool) -> Result<Leaktrace> {
        Leaktrace::start(args, &[], echo)
    }

    fn start<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &OsStr)], echo: bool) -> Result<Leaktrace> {
        let mut child = Command::new(leaktrace_bin()?)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start leaktrace")?;
        let (tx, attached) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped"), stdout.clone(), tx.clone(), echo),
            collect(child.stderr.take().expect("piped"), stderr.clone(), tx, echo),
        ];
        Ok(Leaktrace { child, stdout, stderr, readers, attached })
    }

    /// Starts tracing `memcg` for `seconds` (1 s interval, sampling at `SCENARIO_SAMPLE_BYTES`) into `output` and returns once the programs are attached.
    pub fn trace(memcg: &Memcg, seconds: u32, output: &Path) -> Result<Leaktrace> {
        Leaktrace::trace_with(memcg, seconds, output, &[], &[])
    }

    /// As `trace`, with more leaktrace arguments (`--record-all`) and environment variables
    /// (`LEAKTRACE_IGNORE_EVENTS`).
    pub fn trace_with(
        memcg: &Memcg,
        seconds: u32,
        output: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Leaktrace> {
        let seconds = seconds.to_string();
        let mut args = vec![
            OsStr::new("--cgroup"),
            memcg.path().as_os_str(),
            OsStr::new("--duration"),
            OsStr::new(&seconds),
            OsStr::new("--interval"),
            OsStr::new("1"),
            OsStr::new("--output"),
            output.as_os_str(),
        ];
        if !extra.contains(&"--record-all") && !extra.contains(&"--sample-bytes") {
            args.extend([OsStr::new("--sample-bytes"), OsStr::new(SCENARIO_SAMPLE_BYTES)]);
        }
        args.extend(extra.iter().map(OsStr::new));
        let env: Vec<(&str, &OsStr)> = env.iter().map(|&(k, v)| (k, OsStr::new(v))).collect();
        let mut trace = Leaktrace::spawn_with_env(&args, &env)?;
        trace.wait_attached(Duration::from_secs(10))?;
        Ok(trace)
    }

    /// Waits for a line saying "attached"; fails if leaktrace exits or stays silent for `timeout`.
    pub fn wait_attached(&mut self, timeout: Duration) -> Result<()> {
        match self.attached.recv_timeout(timeout) {
            Ok(()) => Ok(()),
            Err(why) => {
                let _ = self.child.kill();
                let status = self.child.wait()?;
                let out = self.output(status);
                match why {
                    mpsc::RecvTimeoutError::Disconnected => {
                        bail!("leaktrace exited before attaching; {}", describe(&out))
                    }
                    mpsc::RecvTimeoutError::Timeout => {
                        bail!("leaktrace did not attach within {timeout:?}; {}", describe(&out))
                    }
                }
            }
        }
    }

    /// Waits for leaktrace to exit. Past `timeout` it gets SIGTERM (its outputs are still written), then SIGKILL,
    /// and this fails.
    pub fn wait(&mut self, timeout: Duration) -> Result<Output> {
        let status = match wait_timeout(&mut self.child, timeout)? {
            Some(status) => status,
            None => {
                // SAFETY: plain syscall on our own child.
                unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
                if wait_timeout(&mut self.child, Duration::from_secs(5))?.is_none() {
                    self.child.kill()?;
                }
                let status = self.child.wait()?;
                let out = self.output(status);
                bail!("leaktrace did not finish within {timeout:?}; {}", describe(&out));
            }
        };
        Ok(self.output(status))
    }

    /// The process id of the running leaktrace (to signal it or read its /proc entries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks leaktrace to stop (SIGINT, as Ctrl-C): it writes its outputs and exits; `wait` collects it.
    pub fn interrupt(&self) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
    }

    fn output(&mut self, status: ExitStatus) -> Output {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let take = |buf: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *buf.lock().unwrap_or_else(PoisonError::into_inner));
        Output { status, stdout: take(&self.stdout), stderr: take(&self.stderr) }
    }
}

impl Drop for Leaktrace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A finished trace of one workload. The memcg (and so the workload, if still running) goes when this is dropped.
pub struct Traced {
    pub report: Value,
    /// leaktrace's exit status and output (its terminal summary on stdout).
    pub output: Output,
    pub workload: Child,
    _memcg: Memcg,
    _dir: tempfile::TempDir,
}

impl Traced {
    /// Where leaktrace wrote its outputs (gone with this).
    pub fn output_dir(&self) -> &Path {
        self._dir.path()
    }
}

/// Attaches leaktrace (with more arguments and environment variables) to a fresh memcg, starts `workload args` in
/// it, traces for `seconds` and reads the report.
pub fn trace_workload_with(
    workload: &str,
    args: &[&str],
    limit: Option<u64>,
    seconds: u32,
    leaktrace_args: &[&str],
    env: &[(&str, &str)],
) -> Result<Traced> {
    let mut cmd = Command::new(build_workload(workload)?);
    cmd.args(args);
    trace_command(workload, cmd, limit, seconds, leaktrace_args, env)
}

/// Traces any command (a runtime running a script, say) in a fresh memcg named after `name`, as
/// [`trace_workload_with`] does a built workload.
pub fn trace_command(
    name: &str,
    cmd: Command,
    limit: Option<u64>,
    seconds: u32,
    leaktrace_args: &[&str],
    env: &[(&str, &str)],
) -> Result<Traced> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let memcg = Memcg::create(name, limit)?;
    let dir = tempfile::tempdir()?;
    let mut trace = Leaktrace::trace_with(&memcg, seconds, dir.path(), leaktrace_args, env)?;
    let workload = memcg.spawn_in(cmd)?;
    let out = trace.wait(Duration::from_secs(u64::from(seconds) + 30))?;
    ensure!(out.status.success(), "leaktrace failed: {}", describe(&out));
    assert_nothing_attached()?;
    let report = read_report(dir.path())?;
    // Shown with --nocapture (and in CI logs on failure): the figures the issue notes quote.
    eprintln!("{program}: {}\n{}", report["collection"], summarize(&report));
    Ok(Traced { report, output: out, workload, _memcg: memcg, _dir: dir })
}

/// Runs a shared scenario (tests/src/scenarios.rs) on the host with more leaktrace arguments and applies its checks.
pub fn run_scenario(scenario: &Scenario, leaktrace_args: &[&str]) -> Result<Traced> {
    let limit = Some(scenario.limit_bytes);
    let (workload, args, seconds) = (scenario.workload, scenario.args, scenario.seconds);
    let all_args: Vec<&str> = scenario.leaktrace_args.iter().chain(leaktrace_args).copied().collect();
    let mut run = trace_workload_with(workload, args, limit, seconds, &all_args, &[])?;
    (scenario.check)(&run.report)?;
    if scenario.expect_oom_kill {
        let pid = run.workload.id();
        let status =
            wait_timeout(&mut run.workload, Duration::from_secs(30))?.context("the workload was never killed")?;
        ensure!(status.signal() == Some(libc::SIGKILL), "the workload ended with {status}, not SIGKILL");
        let killed = scenarios::first_oom_pid(&run.report);
        ensure!(killed == Some(u64::from(pid)), "oom_kills[0] is pid {killed:?}, not the workload (pid {pid})");
    }
    Ok(run)
}

/// A scenario as a privileged test (skipped without root outside CI, one at a time), with `more` checks on its
/// report.
pub fn scenario_test(
    scenario: &Scenario,
    leaktrace_args: &[&str],
    more: impl FnOnce(&Value) -> Result<()>,
) -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    more(&run_scenario(scenario, leaktrace_args)?.report)
}

/// Copies `from` into `into` line by line, echoing each line (if `echo`) and signalling the first one that says
/// "attached".
fn collect(
    from: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
    attached: mpsc::Sender<()>,
    echo: bool,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            if echo {
                eprint!("  | {text}");
            }
            if text.contains("attached") {
                let _ = attached.send(());
            }
            into.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(&line);
            line.clear();
        }
    })
}

/// Runs leaktrace to completion with a hard time limit.
pub fn run_leaktrace(args: &[&str], timeout: Duration) -> Result<Output> {
    Leaktrace::spawn(args)?.wait(timeout)
}

/// The exit status, or `None` if `child` is still running after `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Exit status and output, for failure messages.
pub fn describe(out: &Output) -> String {
    let how = match (out.status.code(), out.status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown exit".into(),
    };
    format!(
        "{how}\n--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn read_report(dir: &Path) -> Result<Value> {
    let path = dir.join("report.json");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// A JSON array as a slice (`items(&report["sites"])`); empty when absent or not an array.
pub fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Whether `site` has a frame on the given side (kernel or user) whose symbol contains `needle`.
pub fn has_frame(site: &Value, kernel: bool, needle: &str) -> bool {
    items(&site["frames"])
        .iter()
        .any(|f| f["kernel"].as_bool() == Some(kernel) && f["symbol"].as_str().is_some_and(|s| s.contains(needle)))
}

/// Whether `symbol` names the function `name`: the symbol without its parameter list (C++), clone suffix
/// (`.part.0`, `[clone .constprop.0]`) and Rust hash is `name`, or ends with `::name` (so `SessionStore::remember`
/// matches `SessionStore::remember(unsigned long)` and `main` matches the Rust `retain_blocks::main`, but not
/// `__libc_start_main`).
pub fn names_function(symbol: &str, name: &str) -> bool {
    let end = symbol.find(['(', ' ', '.']).unwrap_or(symbol.len());
    let base = &symbol[..end];
    let base = match base.rsplit_once("::h") {
        Some((path, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => path,
        _ => base,
    };
    base == name || base.strip_suffix(name).is_some_and(|path| path.ends_with("::"))
}

/// The symbols of a site's user frames (those not marked kernel), leaf first; `?` for a frame without one.
pub fn user_symbols(site: &Value) -> Vec<&str> {
    items(&site["frames"])
        .iter()
        .filter(|f| f["kernel"].as_bool() != Some(true))
        .map(|f| f["symbol"].as_str().unwrap_or("?"))
        .collect()
}

/// Fails unless the site's user frames hold `chain` in order, leaf to root: `chain[i]` lists the function names
/// accepted at step i (`names_function`). Other frames may come between (libc, inlined standard-library helpers),
/// but a step that misses (a frame lost to the stack walk) fails, naming the frames the site has.
pub fn ensure_user_chain(site: &Value, chain: &[&[&str]]) -> Result<()> {
    let symbols = user_symbols(site);
    let mut rest = symbols.iter();
    for (step, names) in chain.iter().enumerate() {
        ensure!(
            rest.any(|s| names.iter().any(|n| names_function(s, n))),
            "the site's user frames miss {} (step {} of the chain {chain:?}): {}",
            names.join(" or "),
            step + 1,
            describe_site(site)
        );
    }
    Ok(())
}

/// A site's kind, outstanding bytes and user frames, leaf first: what the unwinding tests report.
pub fn describe_site(site: &Value) -> String {
    format!(
        "{} site, {} bytes outstanding, user frames (leaf first): {}",
        site["kind"].as_str().unwrap_or("?"),
        site["outstanding_bytes"],
        user_symbols(site).join(" <- ")
    )
}

/// The site's label as leaktrace names it (`sites[].label`: its first application frame).
pub fn app_label(site: &Value) -> Option<&str> {
    site["label"].as_str()
}

/// The top sites of a report, one line each with their leading kernel frames and their user frames (`?` for an
/// unnamed one): what a failing assertion should show.
pub fn summarize(report: &Value) -> String {
    let mut text = format!("verdict: {}\nattribution: {}\n", report["verdict"], report["attribution"]);
    for site in items(&report["sites"]).iter().take(8) {
        let kernel: Vec<&str> = items(&site["frames"])
            .iter()
            .filter(|f| f["kernel"].as_bool() == Some(true))
            .filter_map(|f| f["symbol"].as_str())
            .take(4)
            .collect();
        let user = user_symbols(site);
        let frames = [kernel.join(" <- "), user[..user.len().min(8)].join(" <- ")];
        text += &format!(
            "  {} outstanding={} alloc={} cache={} frames: {}\n",
            site["kind"],
            site["outstanding_bytes"],
            site["alloc_bytes"],
            site["slab_cache"],
            frames.iter().filter(|f| !f.is_empty()).cloned().collect::<Vec<_>>().join(" | ")
        );
    }
    text
}

/// Fails if a program leaktrace loaded is still in the kernel with no process holding it. Programs that a running
/// process holds belong to another leaktrace (someone else's trace on a shared machine), not to one that has exited.
/// Program ids go away a moment after the last reference does, so this waits up to 3 s before failing.
pub fn assert_nothing_attached() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show"])
            .output()
            .context("cannot run bpftool (cargo xtask bootstrap installs it)")?;
        if !out.status.success() {
            bail!("bpftool prog show failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let progs = serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")?;
        let held = held_program_ids();
        let left: Vec<String> =
            leaktrace_programs(&progs).into_iter().filter(|(id, _)| !held.contains(id)).map(|(_, name)| name).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("leaktrace programs still loaded after it exited: {left:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Ids and names of leaktrace's programs in `bpftool -j prog show` output.
fn leaktrace_programs(progs: &Value) -> Vec<(u64, String)> {
    items(progs)
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?)))
        .filter(|(_, name)| name.starts_with(PROGRAM_PREFIX))
        .map(|(id, name)| (id, name.to_owned()))
        .collect()
}

/// Ids of the eBPF programs that live processes hold through a program or link descriptor.
fn held_program_ids() -> HashSet<u64> {
    let Ok(procs) = fs::read_dir("/proc") else { return HashSet::new() };
    procs
        .flatten()
        .filter(|p| p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|p| fs::read_dir(p.path().join("fdinfo")).ok())
        .flat_map(|fds| fds.flatten())
        .filter_map(|fd| fs::read_to_string(fd.path()).ok())
        .filter_map(|info| fdinfo_prog_id(&info))
        .collect()
}

/// The `prog_id:` of a program or link descriptor's fdinfo.
fn fdinfo_prog_id(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse().ok())
}

impl Memcg {
    /// Kills the cgroup's processes and removes it now (a test that removes the cgroup under a running trace);
    /// dropping it afterwards does nothing more.
    pub fn remove(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} still holds {pids:?}; leaving it", self.path.display());
            }
            for pid in pids {
                // SAFETY: plain syscall; these pids are in a cgroup this test created.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(20));
        }
        // The cgroup can stay busy for a moment after its last task has gone.
        for _ in 0..100 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", self.path.display())),
            }
        }
        bail!("{} stayed busy; remove it with rmdir", self.path.display())
    }

    /// OOM kills in this cgroup so far, as the kernel counts them (v1 `memory.oom_control`, v2 `memory.events`).
    pub fn oom_kills(&self) -> Result<u64> {
        let file = self.path.join(self.file("memory.oom_control", "memory.events"));
        let text = fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no oom_kill line in {}: {text:?}", file.display()))
    }
}

/// The eBPF objects a process holds through its descriptors: (program ids, link ids, map ids).
pub fn held_bpf_objects(pid: u32) -> (HashSet<u64>, HashSet<u64>, HashSet<u64>) {
    let mut held = (HashSet::new(), HashSet::new(), HashSet::new());
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return held };
    for info in fds.flatten().filter_map(|fd| fs::read_to_string(fd.path()).ok()) {
        let id = |key: &str| info.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok());
        match (id("link_id:"), id("prog_id:"), id("map_id:")) {
            (Some(link), _, _) => held.1.insert(link),
            (None, Some(prog), _) => held.0.insert(prog),
            (None, None, Some(map)) => held.2.insert(map),
            _ => false,
        };
    }
    held
}

/// Ids of every eBPF object of one kind (`prog`, `link`, `map`) in the kernel now.
pub fn bpf_object_ids(kind: &str) -> Result<HashSet<u64>> {
    let out = Command::new("bpftool").args(["-j", kind, "show"]).output().context("cannot run bpftool")?;
    if !out.status.success() {
        bail!("bpftool {kind} show failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let all: Value = serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")?;
    Ok(items(&all).iter().filter_map(|o| o["id"].as_u64()).collect())
}

/// Stops a daemon the test started (SIGTERM, so it stops its children and unmounts; SIGKILL after 20 s) and
/// unmounts whatever is still mounted below its temp dir `dir` (overlay layers, netns), which would keep it there.
pub fn stop_daemon(daemon: &mut Child, dir: &Path) {
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    if !matches!(wait_timeout(daemon, Duration::from_secs(20)), Ok(Some(_))) {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root = dir.to_string_lossy().to_string();
    let mut points: Vec<&str> =
        mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&root)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_leaktrace_programs_in_bpftool_output() {
        let progs = json!([
            {"id": 3, "type": "cgroup_device", "tag": "ab"},
            {"id": 7, "type": "tracepoint", "name": "lt_page_alloc"},
            {"id": 9, "type": "tracepoint", "name": "memleak_alloc"},
            {"id": 11, "type": "tracepoint", "name": "lt_kmalloc"}
        ]);
        assert_eq!(leaktrace_programs(&progs), [(7, "lt_page_alloc".to_string()), (11, "lt_kmalloc".to_string())]);
        assert!(leaktrace_programs(&json!([])).is_empty());
    }

    #[test]
    fn reads_program_ids_from_fdinfo() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\nprog_jited:\t1\n\
                    prog_tag:\t3b185187f1855c4c\nmemlock:\t4096\nprog_id:\t412\n";
        let link = "link_type:\tperf\nlink_id:\t9\nprog_tag:\t3b185187f1855c4c\nprog_id:\t413\n";
        assert_eq!(fdinfo_prog_id(prog), Some(412));
        assert_eq!(fdinfo_prog_id(link), Some(413));
        assert_eq!(fdinfo_prog_id("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn matches_frames_by_side_and_symbol() {
        let site = json!({"kind": "slab", "frames": [
            {"symbol": "kmem_cache_alloc_noprof", "kernel": true},
            {"symbol": "do_pipe2", "kernel": true},
            {"symbol": null, "kernel": false},
            {"symbol": "leak_pipes", "kernel": false}
        ]});
        assert!(has_frame(&site, true, "pipe"));
        assert!(has_frame(&site, false, "leak_pipes"));
        assert!(!has_frame(&site, true, "leak_pipes"));
        assert!(!has_frame(&json!({"kind": "anon"}), false, "x"));
    }

    #[test]
    fn names_functions_of_c_cxx_and_rust() {
        assert!(names_function("main", "main"));
        assert!(!names_function("__libc_start_main", "main"));
        assert!(!names_function("__libc_start_call_main", "main"));
        assert!(names_function("retain_blocks::main", "main"));
        assert!(names_function("retain_blocks::retain_block::h5796e0ae27c75452", "retain_block"));
        assert!(names_function("SessionStore::remember(unsigned long, std::string const&)", "SessionStore::remember"));
        assert!(names_function("SessionStore::remember(unsigned long)", "remember"));
        assert!(!names_function("SessionStore::remember_all()", "SessionStore::remember"));
        assert!(names_function("fill_record.part.0", "fill_record"));
        assert!(names_function("handle_request [clone .constprop.0]", "handle_request"));
        assert!(!names_function("handle_requests", "handle_request"));
    }

    #[test]
    fn checks_an_ordered_chain_of_user_frames() {
        let site = json!({"kind": "anon", "frames": [
            {"symbol": "clear_page_erms", "kernel": true},
            {"symbol": "__memset_avx2_unaligned_erms", "kernel": false},
            {"symbol": "std::vector<unsigned char>::_M_fill_assign(unsigned long)", "kernel": false},
            {"symbol": "SessionStore::remember(unsigned long)", "kernel": false},
            {"symbol": null, "kernel": false},
            {"symbol": "handle_request", "kernel": false},
            {"symbol": "main", "kernel": false},
            {"symbol": "__libc_start_call_main", "kernel": false}
        ]});
        ensure_user_chain(&site, &[&["SessionStore::remember"], &["handle_request"], &["main"]]).unwrap();
        ensure_user_chain(&site, &[&["x", "remember"], &["main"]]).unwrap();
        let err = ensure_user_chain(&site, &[&["handle_request"], &["SessionStore::remember"]]).unwrap_err();
        assert!(err.to_string().contains("miss SessionStore::remember (step 2"), "{err}");
        assert!(
            err.to_string().contains("anon site, null bytes outstanding, user frames (leaf first): __memset"),
            "{err}"
        );
        assert!(err.to_string().contains("<- ? <- handle_request <- main"), "{err}");
        assert!(ensure_user_chain(&json!({"kind": "anon"}), &[&["main"]]).is_err());
        assert_eq!(
            app_label(&json!({"label": "SessionStore::remember(unsigned long)"})),
            Some("SessionStore::remember(unsigned long)")
        );
        assert_eq!(app_label(&site), None, "a report without labels names nothing");
    }

    #[test]
    fn summary_lists_sites_with_their_frames() {
        let report = json!({"verdict": {"class": "heap-leak"}, "sites": [
            {"kind": "anon", "outstanding_bytes": 42, "alloc_bytes": 50, "slab_cache": null,
             "frames": [{"symbol": "leak_heap_blocks"}, {"symbol": null}, {"symbol": "main"}]}
        ]});
        let text = summarize(&report);
        assert!(text.contains("heap-leak"), "{text}");
        assert!(
            text.contains("\"anon\" outstanding=42 alloc=50 cache=null frames: leak_heap_blocks <- ? <- main"),
            "{text}"
        );
        assert!(summarize(&json!({})).starts_with("verdict: null"));
    }

    #[test]
    fn builds_every_workload() {
        for name in ["heap_leak", "pipe_leak", "oom_leak", "churn", "session_cache", "session_store", "retain_blocks"] {
            let exe = build_workload(name).unwrap();
            assert!(exe.is_file());
            // Cached: a second call does not rebuild.
            let built = fs::metadata(&exe).unwrap().modified().unwrap();
            assert_eq!(fs::metadata(build_workload(name).unwrap()).unwrap().modified().unwrap(), built);
        }
        assert!(build_workload("no_such_workload").is_err());
    }

    #[test]
    fn describes_how_a_process_ended() {
        let out = Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]).output().unwrap();
        let text = describe(&out);
        assert!(text.starts_with("exit code 3"), "{text}");
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
    }
}
