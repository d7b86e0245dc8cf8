//! The TCP fault proxy, against a tiny echo server on loopback.

use std::time::{Duration, Instant};

use dlock_fixtures::faults::{Fault, FaultProxy};
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

/// Latency should delay each chunk once, in order, without adding up (a delay line, not one
/// sleep per chunk): a chunk sent while another is still delayed arrives `d` after it was
/// sent, not `d` after the one before it left.
#[tokio::test]
async fn latency_is_pipelined_and_keeps_order() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut s).await.unwrap();
    proxy.set(Fault::Latency(Duration::from_millis(400)));
    let t = Instant::now();
    s.write_all(b"a").await.unwrap();
    // The gap between the two chunks under test, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"b").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while got.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("echoes arrive")
            .unwrap();
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    let took = t.elapsed();
    assert_eq!(got, b"ab", "order kept");
    // Pipelined: "b" is back 100 + 2 × 400 = 900 ms after the start. One sleep per chunk
    // would queue it behind "a" in each direction: 1200 ms.
    assert!(took >= Duration::from_millis(850), "{took:?}");
    assert!(
        took < Duration::from_millis(1050),
        "latency added up: {took:?}"
    );
}

/// A connection opened while the proxy resets should be reset at once, both ways, not left
/// half open (a request swallowed, no reply, no RST: a blackhole instead of a reset).
#[tokio::test]
async fn connections_opened_during_a_reset_are_reset() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    proxy.set(Fault::Reset);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let _ = s.write_all(b"ping").await;
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the connection must end, not hang");
    match r {
        Ok(n) => assert_eq!(n, 0, "nothing may be echoed during a reset"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // After the reset, new connections pass again.
    proxy.set(Fault::Pass);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut s).await.unwrap();
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
