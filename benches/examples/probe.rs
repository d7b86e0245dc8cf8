use dlock::{LockName, LockOptions};
use sqlx::Connection;
fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let url = std::env::args().nth(2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = dlock::connect(&url).await.unwrap();
        let mut raw = sqlx::PgConnection::connect(&url).await.unwrap();
        use sqlx::Executor;
        if let Ok(set) = std::env::var("PROBE_SET") {
            raw.execute(set.as_str()).await.unwrap();
        }
        let name = LockName::new("x").unwrap();
        let opts = LockOptions::new();
        let (mut a, mut r, mut fa, mut fr) = (vec![], vec![], vec![], vec![]);
        for i in 0..4000 {
            if mode == "phases" {
                use std::time::Instant;
                let t0 = Instant::now();
                let g = b.acquire(&name, &opts).await.unwrap();
                let t1 = Instant::now();
                g.release().await.unwrap();
                let t2 = Instant::now();
                let _: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                        .bind("f")
                        .fetch_one(&mut raw)
                        .await
                        .unwrap();
                let t3 = Instant::now();
                let _: bool =
                    sqlx::query_scalar("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                        .bind("f")
                        .fetch_one(&mut raw)
                        .await
                        .unwrap();
                let t4 = Instant::now();
                if i > 500 {
                    a.push(t1 - t0);
                    r.push(t2 - t1);
                    fa.push(t3 - t2);
                    fr.push(t4 - t3);
                }
                continue;
            }
            if mode == "dlock" {
                let g = b.acquire(&name, &opts).await.unwrap();
                g.release().await.unwrap();
            } else {
                let _: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                        .bind("f")
                        .fetch_one(&mut raw)
                        .await
                        .unwrap();
                let _: bool =
                    sqlx::query_scalar("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                        .bind("f")
                        .fetch_one(&mut raw)
                        .await
                        .unwrap();
            }
        }
        for v in [&mut a, &mut r, &mut fa, &mut fr] {
            v.sort();
        }
        if mode == "phases" {
            println!(
                "acquire {:?} release {:?} | floor lock {:?} unlock {:?}",
                a[a.len() / 2],
                r[r.len() / 2],
                fa[fa.len() / 2],
                fr[fr.len() / 2]
            );
        }
    });
}
