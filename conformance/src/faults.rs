//! Fault injection that works anywhere: an in-process TCP proxy between a client and a
//! server on loopback that can pass traffic, delay it, blackhole it (stop forwarding while
//! keeping both sockets open — no RST, no FIN), reset every connection with RST, or close
//! them.
//!
//! What a proxy cannot do: the server's kernel keeps talking to the proxy's socket, which
//! keeps ACKing, so server-side TCP keepalives never fire through a blackholed proxy. Tests
//! that need the server to notice a vanished client need a real blackhole (a network
//! namespace whose link goes down).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does to the traffic right now (applies to existing connections too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Forward everything, each chunk delayed by this much (each direction), in order.
    /// Chunks are pipelined (a delay line): a burst is delayed by `d`, not by `d` per chunk.
    /// Chunks already delayed keep their due time when the fault changes to `Pass`.
    Latency(Duration),
    /// Forward nothing, keep every socket open. Healing (`Pass`) resumes the flow.
    Blackhole,
    /// Reset every open connection with RST; new connections are reset at once.
    Reset,
    /// Close every open connection with FIN; new connections are closed at once.
    Close,
}

/// A TCP proxy on 127.0.0.1 in front of one upstream address.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: Arc<watch::Sender<Fault>>,
    accepted: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (which must be a
    /// loopback address: fault injection never sends traffic anywhere else).
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        if !upstream.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fault proxy upstream {upstream} is not a loopback address"),
            ));
        }
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, _) = watch::channel(Fault::Pass);
        let fault = Arc::new(tx);
        let f = fault.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let f = f.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, f).await;
                    }
                });
            }
        });
        Ok(FaultProxy {
            addr,
            fault,
            accepted,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the fault for existing and new connections.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// How many connections clients have opened to the proxy so far, whatever the fault
    /// did to them (a blackholed connection is accepted, then held).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Connections end: their relays see the sender gone and close.
        self.fault.send_replace(Fault::Close);
    }
}

async fn relay(client: TcpStream, server: TcpStream, fault: Arc<watch::Sender<Fault>>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, fault.subscribe()));
    let down = tokio::spawn(pump(sr, cw, fault.subscribe()));
    let _ = tokio::join!(up, down);
}

/// How many chunks one direction may hold in its delay line before it stops reading (the
/// sender then stalls on its full socket buffer, as on a slow link).
const DELAY_LINE_CHUNKS: usize = 256;

/// Copies one direction, obeying the fault. On `Reset`, the socket is closed with RST.
///
/// Every chunk read gets a due time: now for `Pass`, now + d for `Latency(d)`. Chunks leave
/// in order, each at its due time, while later chunks are already being read: a delay line,
/// so latency adds to each chunk once instead of accumulating over a burst. While
/// blackholed nothing leaves and reading stops after the first held chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut eof = false;
    loop {
        let current = *fault.borrow_and_update();
        match current {
            Fault::Reset => {
                reset(to);
                return;
            }
            Fault::Close => break,
            Fault::Pass | Fault::Latency(_) | Fault::Blackhole => {}
        }
        if eof && line.is_empty() {
            break;
        }
        let blackholed = current == Fault::Blackhole;
        // While blackholed, one chunk is held and reading stops (the sender stalls).
        let may_read = !eof && line.len() < DELAY_LINE_CHUNKS && (!blackholed || line.is_empty());
        let due = line.front().map(|(t, _)| *t).filter(|_| !blackholed);
        tokio::select! {
            r = from.read(&mut buf), if may_read => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    let delay = match current {
                        Fault::Latency(d) => d,
                        _ => Duration::ZERO,
                    };
                    line.push_back((Instant::now() + delay, buf[..n].to_vec()));
                }
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if let Some((_, chunk)) = line.pop_front() {
                    if to.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            }
            changed = fault.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Closes the socket with RST: SO_LINGER 0, and no FIN from the write half on the way out.
fn reset(to: tokio::net::tcp::OwnedWriteHalf) {
    use std::os::fd::AsRawFd;
    let fd = to.as_ref().as_raw_fd();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid fd with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // The socket closes (with RST) when the read half, owned by the other direction's
    // pump, is dropped too.
    to.forget();
}
