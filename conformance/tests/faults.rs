//! The TCP fault proxy, against a tiny echo server on loopback.

use std::time::{Duration, Instant};

use conformance::faults::{Fault, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

#[tokio::test]
async fn pass_latency_blackhole_heal() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut s).await.unwrap();

    proxy.set(Fault::Latency(Duration::from_millis(100)));
    let t = Instant::now();
    round_trip(&mut s).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );

    proxy.set(Fault::Blackhole);
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
    assert!(r.is_err(), "nothing may get through a blackhole");
    proxy.set(Fault::Pass);
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("healed link delivers")
        .unwrap();
    assert_eq!(&buf, b"ping");
}

/// Latency should delay each chunk once, in order, without adding up over a burst (a delay
/// line, not one sleep per chunk).
#[tokio::test]
async fn latency_is_pipelined_and_keeps_order() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut s).await.unwrap();
    proxy.set(Fault::Latency(Duration::from_millis(150)));
    let t = Instant::now();
    // Ten chunks 20 ms apart: serial sleeps would need 10 × 300 ms for the echoes.
    for i in 0..10u8 {
        s.write_all(&[b'0' + i]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while got.len() < 10 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("echoes arrive")
            .unwrap();
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    let took = t.elapsed();
    assert_eq!(got, b"0123456789", "order kept");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "latency added up: {took:?}"
    );
}

#[tokio::test]
async fn reset_sends_rst_and_close_sends_fin() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut s).await.unwrap();
    proxy.set(Fault::Reset);
    let mut buf = [0u8; 4];
    let err = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    proxy.set(Fault::Pass);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut s).await.unwrap();
    proxy.set(Fault::Close);
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "FIN reads as end of stream");
}

#[tokio::test]
async fn refuses_non_loopback_upstreams() {
    let err = FaultProxy::start("10.0.0.1:5432".parse().unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
