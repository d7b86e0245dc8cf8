//! Helpers shared by the fixture test files: a loopback address, and the check that a
//! server is gone (process, port and directory).
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use dlock_fixtures::{port_open, process_alive};

/// 127.0.0.1:`port`.
pub fn addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// The process is dead, the port closed and (unless `dir` is None) the directory gone.
pub async fn assert_gone(pid: u32, port: u16, dir: Option<&Path>) -> Result<()> {
    crate::common::eventually(
        &format!("pid {pid} to die"),
        Duration::from_secs(15),
        || async move { Ok(!process_alive(pid)) },
    )
    .await?;
    crate::common::eventually(
        &format!("port {port} to close"),
        Duration::from_secs(15),
        || async move { Ok(!port_open(port)) },
    )
    .await?;
    if let Some(dir) = dir {
        ensure!(!dir.exists(), "{} still exists", dir.display());
    }
    Ok(())
}
