//! `redis+sentinel://`: the master is whatever the Sentinels say it is *now*. Every new
//! connection (commands and pub/sub) asks the Sentinels in the order given
//! (`SENTINEL GET-MASTER-ADDR-BY-NAME`), connects to the address the first one that knows
//! the master gives, and the command connection checks with `ROLE` that the server it
//! reached is a master (a Sentinel may still name a demoted one for a moment). So after a
//! failover the next reconnection reaches the promoted replica.
//!
//! redis-rs has a `sentinel` feature, but its `SentinelClient` opens its own connections
//! to the master, around the [`Node`](crate::node) that every request here goes through
//! (Nagle off, scripts loaded on connect, one connection attempt at a time); asking for the
//! address is one command, so it is done here and the feature stays off.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Sentinels of one master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sentinels {
    /// The name they monitor the master under.
    pub master: String,
    /// Their addresses, in the order of the URL.
    pub addrs: Vec<(String, u16)>,
}

impl Sentinels {
    /// The master's address from the first Sentinel that answers with one; each gets
    /// `timeout`.
    pub async fn master_addr(&self, timeout: Duration) -> io::Result<(String, u16)> {
        let mut why = Vec::new();
        for (host, port) in &self.addrs {
            match tokio::time::timeout(timeout, ask(host, *port, &self.master)).await {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => why.push(format!("{host}:{port}: does not know {:?}", self.master)),
                Ok(Err(e)) => why.push(format!("{host}:{port}: {e}")),
                Err(_) => why.push(format!("{host}:{port}: no answer within {timeout:?}")),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            format!("no Sentinel gave the master's address: {}", why.join("; ")),
        ))
    }
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME master` on one Sentinel (no authentication).
async fn ask(host: &str, port: u16, master: &str) -> io::Result<Option<(String, u16)>> {
    let mut stream = TcpStream::connect((host, port)).await?;
    let args = ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", master];
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let value = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the Sentinel closed the connection before its reply",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        // A reply is a few dozen bytes; parse what came once it ends a line.
        if buf.ends_with(b"\r\n") {
            if let Ok(v) = redis::parse_redis_value(&buf) {
                break v;
            }
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "overlong reply"));
        }
    };
    if let redis::Value::ServerError(e) = &value {
        return Err(io::Error::other(format!("the Sentinel said: {e:?}")));
    }
    redis::from_redis_value::<Option<(String, u16)>>(value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Whether a `ROLE` reply says master.
pub(crate) fn is_master(role: &redis::Value) -> bool {
    match role {
        redis::Value::Array(items) => matches!(
            items.first(),
            Some(redis::Value::BulkString(b)) if b == b"master"
        ),
        _ => false,
    }
}
