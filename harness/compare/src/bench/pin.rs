//! Pinning the servers to a CPU of their own, apart from the measuring process.

/// Unless `DLOCK_BENCH_PIN=0`, on a Linux machine with two or more CPUs: the server processes
/// `pids` (their threads, and their children — also the ones forked later, such as
/// PostgreSQL's backends, which inherit the postmaster's CPUs) on the last CPU, this process
/// on the others. That models a server on another machine: neither side's CPU time delays
/// the other, and the scheduler's placement no longer decides the result (on 2 cores it made
/// PostgreSQL's ratio jump between 0.96× and 1.40× from one round to the next). Uses
/// `sched_setaffinity` on every thread. Returns whether it pinned; says on stdout what it
/// did either way. Use [`pin_server_apart`] to be able to undo it.
pub fn pin_apart(pids: &[u32]) -> bool {
    let p = pin_server_apart(pids);
    println!("{}", p.description);
    p.pinned
}

/// What [`pin_server_apart`] did.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// Whether the server and this process are on separate CPUs now.
    pub pinned: bool,
    /// One line saying what was done, or why not (starts with `pinning:`).
    pub description: String,
    /// The CPUs this process had before, when it moved itself (even if a server process
    /// could not be moved).
    previous: Option<Vec<usize>>,
}

impl Pinning {
    /// Gives this process (every thread) the CPUs it had before; processes it starts later
    /// inherit them. (The servers stay where they are.)
    pub fn undo(&self) -> bool {
        match &self.previous {
            Some(cpus) => set_cpus(std::process::id(), cpus),
            None => true,
        }
    }
}

/// [`pin_apart`] without printing: says what it did in the returned [`Pinning`].
pub fn pin_server_apart(pids: &[u32]) -> Pinning {
    let not = |description: String| Pinning {
        pinned: false,
        description,
        previous: None,
    };
    if std::env::var_os("DLOCK_BENCH_PIN").is_some_and(|v| v == "0") {
        return not("pinning: off (DLOCK_BENCH_PIN=0)".into());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 || pids.is_empty() {
        return not(format!(
            "pinning: skipped ({cpus} CPU(s), {} server process(es))",
            pids.len()
        ));
    }
    let (server_cpu, client_cpus) = (cpus - 1, (0..cpus - 1).collect::<Vec<_>>());
    let mut all = Vec::new();
    for &pid in pids {
        descendants(pid, &mut all);
    }
    let previous =
        cpus_of(std::process::id()).filter(|_| set_cpus(std::process::id(), &client_cpus));
    let mut ok = previous.is_some();
    for &pid in &all {
        // A server process that ended meanwhile (a PostgreSQL backend closing) is no failure.
        ok &=
            set_cpus(pid, &[server_cpu]) || !std::path::Path::new(&format!("/proc/{pid}")).exists();
    }
    Pinning {
        pinned: ok,
        previous,
        description: format!(
            "pinning: server processes {all:?} on CPU {server_cpu}, this process on CPUs 0-{}{}",
            cpus - 2,
            if ok { "" } else { " (some could not be moved)" }
        ),
    }
}

/// `pid` and every process below it.
fn descendants(pid: u32, out: &mut Vec<u32>) {
    out.push(pid);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            descendants(child, out);
        }
    }
}

/// Moves every thread of process `pid` onto `cpus` (threads that end meanwhile are
/// skipped: a thread pool may let one go while we walk the list).
#[cfg(target_os = "linux")]
fn set_cpus(pid: u32, cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET only writes bit `cpu` of `set` (it panics beyond the set's size;
        // these CPU numbers come from available_parallelism, far below it).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let (mut ok, mut moved) = (true, 0);
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        let r =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if r == 0 {
            moved += 1;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
            ok = false;
        }
    }
    ok && moved > 0
}

/// The CPUs process `pid` (its main thread) may run on.
#[cfg(target_os = "linux")]
fn cpus_of(pid: u32) -> Option<Vec<usize>> {
    // SAFETY: as above; sched_getaffinity fills `set` of the size passed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::sched_getaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET only reads bit `cpu` of `set`.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

#[cfg(not(target_os = "linux"))]
fn set_cpus(_pid: u32, _cpus: &[usize]) -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
fn cpus_of(_pid: u32) -> Option<Vec<usize>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinning a "server" (a `sleep` child) apart moves this process to the other CPUs, and
    /// undoing it restores the mask it had (not a fixed "all CPUs": it once restored "CPU 0
    /// only", because the CPU count it read was already the pinned one). A server process that
    /// ended meanwhile neither fails the pinning nor keeps the undo from running (a PostgreSQL
    /// backend exiting did both, and left the rest of a compare run on one CPU).
    #[test]
    fn pinning_is_undone_to_the_mask_before() {
        let before = cpus_of(std::process::id()).expect("this process's CPUs");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut server = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // A pid that has already ended stands for a server process that exits meanwhile.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        let p = pin_server_apart(&[server.id(), gone_pid]);
        if cpus < 2 {
            assert!(!p.pinned, "{}", p.description);
        } else {
            assert!(p.pinned, "{}", p.description);
            assert_ne!(cpus_of(std::process::id()).as_ref(), Some(&before));
        }
        assert!(p.undo());
        assert_eq!(cpus_of(std::process::id()), Some(before));
        let _ = server.kill();
        let _ = server.wait();
    }
}
