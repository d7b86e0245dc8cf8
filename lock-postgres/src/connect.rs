//! Opening a connection to the right host of a URL that may name several: each in the order
//! given, the first that connects and — under `target_session_attrs=read-write` or
//! `primary` — says it takes writes. So every new lock session (and the session watch) goes
//! to whichever host is the primary *now*: after a failover, to the promoted one.

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use lock_core::{Error, ErrorKind, Operation, Result, pg_tls};

use crate::BACKEND;
use crate::config::PgConfig;

/// `host:port` of `o`, for messages.
fn label(o: &PgConnectOptions) -> String {
    format!("{}:{}", o.get_host(), o.get_port())
}

/// What a connection attempt (a `sqlx::Error` in an error's chain) was refused for, when that
/// is TLS or authentication: the kind to report and the cause in words.
pub(crate) fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<(ErrorKind, String)> {
    let e = e.downcast_ref::<sqlx::Error>()?;
    let db = e.as_database_error();
    let code = db.and_then(|d| d.code());
    pg_tls::classify(db.map(|d| (code.as_deref(), d.message())), e)
}

/// A connection to the first host of `cfg` that qualifies, and that host's options (with
/// `app` as `application_name` when given). Each host gets `connect_timeout`.
pub(crate) async fn connect(
    cfg: &PgConfig,
    app: Option<&str>,
) -> Result<(PgConnection, PgConnectOptions)> {
    let mut why = Vec::new();
    let mut source = None;
    for host in &cfg.hosts {
        let options = match app {
            Some(a) => host.clone().application_name(a),
            None => host.clone(),
        };
        let mut conn = match tokio::time::timeout(cfg.connect_timeout, options.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                why.push(format!("{}: {e}", label(host)));
                source = Some(e);
                continue;
            }
            Err(_) => {
                why.push(format!(
                    "{}: no connection within {:?}",
                    label(host),
                    cfg.connect_timeout
                ));
                continue;
            }
        };
        let Some(sql) = cfg.target.check_sql() else {
            return Ok((conn, options));
        };
        let check = sqlx::query_scalar::<_, bool>(sql).fetch_one(&mut conn);
        match tokio::time::timeout(cfg.check_timeout, check).await {
            Ok(Ok(true)) => return Ok((conn, options)),
            Ok(Ok(false)) => why.push(format!(
                "{}: does not take writes (a standby, or read-only)",
                label(host)
            )),
            Ok(Err(e)) => {
                why.push(format!("{}: asking its role failed: {e}", label(host)));
                source = Some(e);
            }
            Err(_) => why.push(format!(
                "{}: no answer about its role within {:?}",
                label(host),
                cfg.check_timeout
            )),
        }
        let _ = tokio::time::timeout(cfg.check_timeout, conn.close()).await;
    }
    let err = Error::new(
        ErrorKind::Connection,
        BACKEND,
        Operation::Connect,
        format!("cannot connect to {}: {}", cfg.display_url, why.join("; ")),
    );
    // A TLS or authentication refusal is what to report: retrying cannot help.
    Err(pg_tls::reclassify(
        match source {
            Some(s) => err.with_source(s),
            None => err,
        },
        refusal,
    ))
}
