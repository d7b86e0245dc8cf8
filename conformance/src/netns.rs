//! A real network partition: a holder runs inside a network namespace joined to the host by
//! a veth pair, and taking that link down is a blackhole that the *server's* TCP stack sees
//! (no RST, no FIN, nothing delivered either way), so server-side TCP keepalives and
//! `tcp_user_timeout` fire exactly as they would for a client whose network vanished. The
//! in-process [`FaultProxy`](crate::faults::FaultProxy) cannot do that: its own kernel keeps
//! ACKing the server.
//!
//! Linux only, as root, with `ip` (iproute2) and `nft` (nftables) installed
//! (`scripts/install-servers` installs both). Otherwise [`Netns::create`] fails with a
//! [`NetnsError`] saying why, and callers fall back to the proxy.
//!
//! # Layout
//!
//! ```text
//!  host network namespace                         namespace dlock-<pid>-<n>
//!  server on 127.0.0.1:P  <- DNAT --  dl<pid>x<n>  ===veth===  dlock0   holder
//!                                     10.231.a.b+1/30          10.231.a.b+2/30
//! ```
//!
//! Servers keep listening on loopback only. [`Netns::expose`] adds an nftables rule that
//! rewrites the destination of TCP connections arriving *on this veth* for the host end's
//! address and port P to 127.0.0.1:P; `route_localnet` on the host end lets the kernel route
//! such packets to and from loopback. The source is not rewritten, so the server's TCP peer
//! is the namespace's own address (check it with [`tcp_peers`], i.e. `ss -tn`), and when the
//! link goes down the server's segments to that peer silently vanish.
//!
//! The other way to let a holder in a namespace reach the server — making the server also
//! listen on the host end's address — was rejected: a listener on a non-loopback address
//! accepts packets for that address arriving on *any* interface (Linux is a weak-host
//! system), and servers would have to be started (or restarted) knowing the namespace. The
//! DNAT rule only matches packets that enter through our own veth.
//!
//! [`Netns::link_down`] takes down the namespace's end. The host end then loses carrier and
//! the server's packets are dropped without an error: the host's view is that of a remote
//! client behind a cut cable. (Taking the host end down instead would remove the host's route
//! and give the server's sends a local "no route" error, which no real partition does.)
//!
//! # Cleanup
//!
//! Names carry the pid: namespace `dlock-<pid>-<n>`, host interface `dl<pid>x<n>`, nftables
//! table `ip dlock_<pid>_<n>`. Dropping a [`Netns`] deletes the veth pair (both ends, even if
//! sockets of killed processes still pin the namespace), the table and the namespace.
//! Holders started in it should be killed first (they die with the harness anyway, through
//! their parent-death signal). A harness that is killed cannot clean up; the next
//! [`Netns::create`] (in any process) removes namespaces, interfaces and tables whose pid is
//! no longer alive ([`sweep_stale`]). Nothing of a live process is touched.
//!
//! Addresses: one free /30 out of 10.231.0.0/16 per namespace, never overlapping an address
//! or a route the host already has. The namespace has no other route, so a holder inside can
//! reach nothing but the ports exposed to it.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::fixtures::process_alive;

/// The /16 the namespaces' /30s are taken from.
pub const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 231, 0, 0), 16);

/// The name of the namespace's end of the veth pair (inside the namespace).
pub const NS_IFNAME: &str = "dlock0";

/// Where `ip netns add` puts the namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Where programs are looked for besides `PATH` (non-login root shells often lack sbin).
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Why a network namespace could not be made or used.
#[derive(Debug)]
pub enum NetnsError {
    /// Not Linux: network namespaces do not exist here.
    Unsupported,
    /// Not running as root (effective uid given).
    NotRoot {
        /// The effective uid.
        euid: u32,
    },
    /// A program is missing.
    MissingTool {
        /// The program (`ip`, `nft`, `ss`).
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// A command failed.
    Command {
        /// The command line.
        command: String,
        /// Its exit status and error output.
        detail: String,
    },
    /// Every /30 of [`SUBNET`] overlaps an address or a route of the host.
    NoFreeSubnet,
    /// More namespaces than names this process can give (interface names are 15 bytes).
    TooMany,
    /// A system call or file operation failed.
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for NetnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsError::Unsupported => {
                f.write_str("network namespaces need Linux; this is not Linux")
            }
            NetnsError::NotRoot { euid } => {
                write!(f, "network namespaces need root (running as uid {euid})")
            }
            NetnsError::MissingTool { tool, package } => write!(
                f,
                "`{tool}` not found (looked in PATH and /usr/sbin, /sbin); install {package} \
                 (scripts/install-servers does: apt-get install {package})"
            ),
            NetnsError::Command { command, detail } => write!(f, "`{command}` failed: {detail}"),
            NetnsError::NoFreeSubnet => write!(
                f,
                "no free /30 in {}/{}: every one overlaps an address or route of this host",
                SUBNET.0, SUBNET.1
            ),
            NetnsError::TooMany => f.write_str(
                "this process made too many network namespaces (interface names are limited \
                 to 15 bytes)",
            ),
            NetnsError::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for NetnsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetnsError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Io { what, source }
}

/// The programs this module runs.
struct Tools {
    ip: PathBuf,
    nft: PathBuf,
}

fn find_tool(name: &'static str, package: &'static str) -> Result<PathBuf, NetnsError> {
    use crate::fixtures::process::{find_in_path, is_executable};
    find_in_path(name)
        .or_else(|| {
            SBIN.iter()
                .map(|dir| std::path::Path::new(dir).join(name))
                .find(|p| is_executable(p))
        })
        .ok_or(NetnsError::MissingTool {
            tool: name,
            package,
        })
}

/// Checks that namespaces can be made here: Linux, root, `ip` and `nft` installed. Cheap; does
/// not create anything.
pub fn available() -> Result<(), NetnsError> {
    tools().map(|_| ())
}

fn tools() -> Result<Tools, NetnsError> {
    if !cfg!(target_os = "linux") {
        return Err(NetnsError::Unsupported);
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(NetnsError::NotRoot { euid });
    }
    Ok(Tools {
        ip: find_tool("ip", "iproute2")?,
        nft: find_tool("nft", "nftables")?,
    })
}

/// Runs a command to completion; its error output goes into the error.
fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output, NetnsError> {
    use std::io::Write;
    let line = format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting `{line}`")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(io_err(format!("writing to `{line}`")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("waiting for `{line}`")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(NetnsError::Command {
            command: line,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// A network namespace with a veth link to the host, made by this process and removed when
/// dropped. See the module documentation.
pub struct Netns {
    name: String,
    host_if: String,
    table: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    tools: Tools,
    /// `/run/netns/<name>`, for `setns` in children.
    handle: Arc<File>,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns")
            .field("name", &self.name)
            .field("host_if", &self.host_if)
            .field("host_ip", &self.host_ip)
            .field("ns_ip", &self.ns_ip)
            .finish()
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Serialises namespace creation across threads and processes (the free-subnet choice must
/// not race), with `flock` on a file in the temporary directory. Released on drop.
struct CreateLock(File);

impl CreateLock {
    fn take() -> Result<CreateLock, NetnsError> {
        let path = std::env::temp_dir().join("dlock-netns.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(NetnsError::Io {
                what: format!("locking {}", path.display()),
                source: io::Error::last_os_error(),
            });
        }
        Ok(CreateLock(file))
    }
}

impl Drop for CreateLock {
    fn drop(&mut self) {
        // SAFETY: unlocking the descriptor we locked.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

impl Netns {
    /// Makes namespace `dlock-<pid>-<n>` with a veth pair to the host on a free /30 of
    /// [`SUBNET`], both ends and the namespace's loopback up, and an (empty) nftables table
    /// for [`Netns::expose`]. Sweeps what dead processes left first. Blocks for the few
    /// milliseconds the `ip` and `nft` commands take.
    pub fn create() -> Result<Netns, NetnsError> {
        let tools = tools()?;
        let _lock = CreateLock::take()?;
        sweep_with(&tools);
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let host_if = format!("dl{pid}x{n}");
        if host_if.len() > 15 {
            return Err(NetnsError::TooMany);
        }
        let (host_ip, ns_ip) = free_subnet(&tools)?;
        let name = format!("dlock-{pid}-{n}");
        let table = format!("dlock_{pid}_{n}");
        run(&tools.ip, &["netns", "add", &name], None)?;
        // From here on, an early return removes whatever was made.
        let mut partial = Partial {
            tools: &tools,
            name: &name,
            host_if: &host_if,
            table: &table,
            armed: true,
        };
        let host_cidr = format!("{host_ip}/30");
        let ns_cidr = format!("{ns_ip}/30");
        run(
            &tools.ip,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", NS_IFNAME, "netns", &name,
            ],
            None,
        )?;
        run(
            &tools.ip,
            &["addr", "add", &host_cidr, "dev", &host_if],
            None,
        )?;
        let localnet = format!("/proc/sys/net/ipv4/conf/{host_if}/route_localnet");
        fs::write(&localnet, "1").map_err(io_err(format!("writing {localnet}")))?;
        run(&tools.ip, &["link", "set", &host_if, "up"], None)?;
        run(
            &tools.ip,
            &["-n", &name, "addr", "add", &ns_cidr, "dev", NS_IFNAME],
            None,
        )?;
        run(&tools.ip, &["-n", &name, "link", "set", "lo", "up"], None)?;
        run(
            &tools.ip,
            &["-n", &name, "link", "set", NS_IFNAME, "up"],
            None,
        )?;
        let rules = format!(
            "table ip {table} {{\n  chain prerouting {{\n    type nat hook prerouting \
             priority dstnat; policy accept;\n  }}\n}}\n"
        );
        run(&tools.nft, &["-f", "-"], Some(&rules))?;
        let path = Path::new(NETNS_DIR).join(&name);
        let handle = File::open(&path).map_err(io_err(format!("opening {}", path.display())))?;
        partial.armed = false;
        drop(partial);
        Ok(Netns {
            name,
            host_if,
            table,
            host_ip,
            ns_ip,
            tools,
            handle: Arc::new(handle),
        })
    }

    /// The namespace's name (`dlock-<pid>-<n>`), as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host end's interface name (`dl<pid>x<n>`).
    pub fn host_ifname(&self) -> &str {
        &self.host_if
    }

    /// The host end's address: what a process in the namespace connects to.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace's own address: the TCP peer a server sees for a client in it.
    pub fn ns_addr(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// Lets processes in the namespace reach `127.0.0.1:port` at `host_addr():port` (DNAT of
    /// TCP arriving on this veth only). Returns the address to use inside the namespace.
    pub fn expose(&self, port: u16) -> Result<SocketAddr, NetnsError> {
        let rule = format!(
            "add rule ip {table} prerouting iifname \"{ifname}\" ip daddr {ip} tcp dport {port} \
             dnat to 127.0.0.1:{port}\n",
            table = self.table,
            ifname = self.host_if,
            ip = self.host_ip,
        );
        run(&self.tools.nft, &["-f", "-"], Some(&rule))?;
        Ok(SocketAddr::V4(SocketAddrV4::new(self.host_ip, port)))
    }

    /// Takes the link down (the namespace's end): from now on nothing passes either way, and
    /// neither side gets an error or a reset. See the module documentation.
    pub fn link_down(&self) -> Result<(), NetnsError> {
        self.set_link("down")
    }

    /// Brings the link back up (connections that have not timed out carry on).
    pub fn link_up(&self) -> Result<(), NetnsError> {
        self.set_link("up")
    }

    fn set_link(&self, state: &str) -> Result<(), NetnsError> {
        run(
            &self.tools.ip,
            &["-n", &self.name, "link", "set", NS_IFNAME, state],
            None,
        )
        .map(|_| ())
    }

    /// Makes `cmd` run its program inside this namespace (`setns` in the child between fork
    /// and exec). Unlike wrapping it in `ip netns exec`, the program keeps the pid the caller
    /// sees, so signals and parent-death signals work as for any child.
    pub fn enter_on_spawn(&self, cmd: &mut tokio::process::Command) {
        let handle = self.handle.clone();
        // SAFETY: the hook only calls setns(2), which is async-signal-safe, on a descriptor
        // that stays open (the Arc keeps the File alive in the parent, the child has a copy).
        unsafe {
            cmd.pre_exec(move || enter(&handle));
        }
    }

    /// A [`std::process::Command`] for `program` that runs inside this namespace (see
    /// [`Netns::enter_on_spawn`]).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        let handle = self.handle.clone();
        // SAFETY: as in `enter_on_spawn`.
        unsafe {
            cmd.pre_exec(move || enter(&handle));
        }
        cmd
    }
}

fn enter(handle: &File) -> io::Result<()> {
    // SAFETY: setns on a valid namespace descriptor; affects only the calling (child) thread.
    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(
            &self.tools,
            Some(&self.name),
            Some(&self.host_if),
            Some(&self.table),
        );
    }
}

/// What `create` made so far; removed on an early return.
struct Partial<'a> {
    tools: &'a Tools,
    name: &'a str,
    host_if: &'a str,
    table: &'a str,
    armed: bool,
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if self.armed {
            remove(
                self.tools,
                Some(self.name),
                Some(self.host_if),
                Some(self.table),
            );
        }
    }
}

/// Deletes what exists of a namespace, its host interface and its table; errors about parts
/// that are already gone are ignored, others are logged.
fn remove(tools: &Tools, name: Option<&str>, host_if: Option<&str>, table: Option<&str>) {
    let quiet = |what: &str, r: Result<Output, NetnsError>| {
        if let Err(e) = r {
            let text = e.to_string();
            let gone = ["Cannot find device", "No such file", "does not exist"]
                .iter()
                .any(|s| text.contains(s));
            if !gone {
                tracing::warn!("cleaning up {what}: {text}");
            }
        }
    };
    if let Some(ifname) = host_if {
        // Deleting one end deletes the pair, even while sockets pin the namespace.
        if Path::new("/sys/class/net").join(ifname).exists() {
            quiet(ifname, run(&tools.ip, &["link", "del", ifname], None));
        }
    }
    if let Some(table) = table {
        if table_exists(tools, table) {
            quiet(
                table,
                run(&tools.nft, &["delete", "table", "ip", table], None),
            );
        }
    }
    if let Some(name) = name {
        if Path::new(NETNS_DIR).join(name).exists() {
            quiet(name, run(&tools.ip, &["netns", "del", name], None));
        }
    }
}

fn table_names(tools: &Tools) -> Vec<String> {
    let Ok(out) = run(&tools.nft, &["list", "tables", "ip"], None) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table ip "))
        .map(|t| t.trim().to_string())
        .collect()
}

fn table_exists(tools: &Tools, table: &str) -> bool {
    table_names(tools).iter().any(|t| t == table)
}

/// The pid in a name made by this module (`dlock-<pid>-<n>`, `dl<pid>x<n>`,
/// `dlock_<pid>_<n>`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, n) = if let Some(rest) = name.strip_prefix("dlock-") {
        rest.split_once('-')?
    } else if let Some(rest) = name.strip_prefix("dlock_") {
        rest.split_once('_')?
    } else if let Some(rest) = name.strip_prefix("dl") {
        rest.split_once('x')?
    } else {
        return None;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Removes namespaces, veth interfaces and nftables tables made by this module in processes
/// that are no longer alive. Returns how many things were removed. Runs on every
/// [`Netns::create`]; a no-op when namespaces are not available.
pub fn sweep_stale() -> usize {
    match tools() {
        Ok(tools) => {
            let Ok(_lock) = CreateLock::take() else {
                return 0;
            };
            sweep_with(&tools)
        }
        Err(_) => 0,
    }
}

fn sweep_with(tools: &Tools) -> usize {
    let dead = |name: &str| owner_pid(name).is_some_and(|pid| !process_alive(pid));
    let list = |dir: &str| -> Vec<String> {
        fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut removed = 0;
    for ifname in list("/sys/class/net") {
        if ifname.starts_with("dl") && !ifname.starts_with("dlock") && dead(&ifname) {
            remove(tools, None, Some(&ifname), None);
            removed += 1;
        }
    }
    for table in table_names(tools) {
        if table.starts_with("dlock_") && dead(&table) {
            remove(tools, None, None, Some(&table));
            removed += 1;
        }
    }
    for name in list(NETNS_DIR) {
        if name.starts_with("dlock-") && dead(&name) {
            remove(tools, Some(&name), None, None);
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!("removed {removed} network namespace leftovers of dead processes");
    }
    removed
}

/// An IPv4 network as (address as u32, prefix length).
type Net = (u32, u8);

fn parse_net(s: &str) -> Option<Net> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()?),
        None => (s, 32),
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    (len <= 32).then_some((u32::from(addr), len))
}

fn overlaps(a: Net, b: Net) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// Every address and route destination of the host, from `ip -j`.
fn host_nets(tools: &Tools) -> Result<Vec<Net>, NetnsError> {
    let mut nets = Vec::new();
    let json = |args: &[&str]| -> Result<serde_json::Value, NetnsError> {
        let out = run(&tools.ip, args, None)?;
        serde_json::from_slice(&out.stdout).map_err(|e| NetnsError::Command {
            command: format!("ip {}", args.join(" ")),
            detail: format!("unreadable JSON: {e}"),
        })
    };
    let addrs = json(&["-j", "-4", "addr", "show"])?;
    for link in addrs.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                if let Some(net) = parse_net(&format!("{local}/{len}")) {
                    nets.push(net);
                }
            }
        }
    }
    let routes = json(&["-j", "-4", "route", "show", "table", "all"])?;
    for r in routes.as_array().into_iter().flatten() {
        if let Some(dst) = r["dst"].as_str().filter(|d| *d != "default") {
            if let Some(net) = parse_net(dst) {
                nets.push(net);
            }
        }
    }
    Ok(nets)
}

/// The first /30 of [`SUBNET`] that overlaps nothing the host has: (host end, namespace end).
fn free_subnet(tools: &Tools) -> Result<(Ipv4Addr, Ipv4Addr), NetnsError> {
    let taken = host_nets(tools)?;
    pick_subnet(&taken).ok_or(NetnsError::NoFreeSubnet)
}

fn pick_subnet(taken: &[Net]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let base = u32::from(SUBNET.0);
    let count = 1u32 << (32 - SUBNET.1 - 2);
    (0..count)
        .map(|k| base + k * 4)
        .find(|&net| !taken.iter().any(|t| overlaps((net, 30), *t)))
        .map(|net| (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2)))
}

/// The remote addresses of the established TCP connections whose local port is `port`, as
/// `ss -tn` shows them (on the server's side of a connection from a namespace, the
/// namespace's address). Needs `ss` (iproute2).
pub fn tcp_peers(port: u16) -> Result<Vec<SocketAddr>, NetnsError> {
    let ss = find_tool("ss", "iproute2")?;
    let filter = format!("sport = :{port}");
    let out = run(&ss, &["-H", "-tn", "state", "established", &filter], None)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_owner_pid() {
        assert_eq!(owner_pid("dlock-123-4"), Some(123));
        assert_eq!(owner_pid("dlock_123_4"), Some(123));
        assert_eq!(owner_pid("dl123x4"), Some(123));
        for other in [
            "dlock-abc-1",
            "dlock0",
            "dl",
            "dlx1",
            "dl12x",
            "eth0",
            "dlock-1",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn subnets_avoid_what_the_host_has() {
        let net = |s: &str| parse_net(s).unwrap();
        assert_eq!(
            pick_subnet(&[net("127.0.0.0/8"), net("192.0.2.2/24")]),
            Some((Ipv4Addr::new(10, 231, 0, 1), Ipv4Addr::new(10, 231, 0, 2)))
        );
        assert_eq!(
            pick_subnet(&[net("10.231.0.1/30"), net("10.231.0.6")]),
            Some((Ipv4Addr::new(10, 231, 0, 9), Ipv4Addr::new(10, 231, 0, 10)))
        );
        assert_eq!(pick_subnet(&[net("10.0.0.0/8")]), None);
        assert_eq!(parse_net("10.1.2.3/33"), None);
        assert!(overlaps(net("0.0.0.0/0"), net("10.231.0.0/30")));
    }
}
