//! URL parsing tests.
use super::*;

fn ok(mode: Mode, rest: &str) -> Config {
    parse(mode, false, rest).unwrap_or_else(|e| panic!("{rest}: {e}"))
}

#[test]
fn single_instance_urls() {
    let c = ok(Mode::Single, "127.0.0.1:6380");
    assert_eq!(c.endpoints.len(), 1);
    assert_eq!(c.endpoints[0].label(), "127.0.0.1:6380");
    assert_eq!(c.prefix, b"dlock:");
    assert_eq!(c.timeout, DEFAULT_TIMEOUT);

    let c = ok(
        Mode::Single,
        "app:p%40ss@cache/3?prefix=my%20app%3A&timeout=250ms",
    );
    assert_eq!(c.endpoints[0].label(), "cache:6379");
    assert_eq!(c.endpoints[0].info.db(), 3);
    assert_eq!(c.endpoints[0].info.username(), Some("app"));
    assert_eq!(c.endpoints[0].info.password(), Some("p@ss"));
    assert_eq!(c.prefix, b"my app:");
    assert_eq!(c.timeout, Duration::from_millis(250));

    // `+` is literal in userinfo (form encoding applies to query values only)
    let c = ok(Mode::Single, "app:a+b%2Bc@cache?prefix=x+y");
    assert_eq!(c.endpoints[0].info.password(), Some("a+b+c"));
    assert_eq!(c.prefix, b"x y");

    let c = ok(Mode::Single, ":secret@[::1]:7000/?prefix=");
    assert_eq!(c.endpoints[0].label(), "[::1]:7000");
    assert_eq!(c.endpoints[0].info.username(), None);
    assert!(c.prefix.is_empty());
}

#[test]
fn redlock_urls() {
    let c = ok(Mode::Redlock, "h1:1,h2:2,h3?timeout=2s");
    let labels: Vec<_> = c.endpoints.iter().map(Endpoint::label).collect();
    assert_eq!(labels, ["h1:1", "h2:2", "h3:6379"]);
}

#[test]
fn sentinel_urls() {
    let c = ok(
        Mode::Sentinel,
        "u:pw@s1:5000,s2,[::1]:5002/my%20master/2?prefix=x",
    );
    assert_eq!(c.endpoints.len(), 1);
    let e = &c.endpoints[0];
    let s = e.sentinels.as_ref().unwrap();
    assert_eq!(s.master, "my master");
    assert_eq!(
        s.addrs,
        [
            ("s1".to_string(), 5000),
            ("s2".to_string(), 26379),
            ("::1".to_string(), 5002)
        ]
    );
    assert_eq!(e.info.db(), 2);
    assert_eq!(e.info.password(), Some("pw"));
    assert_eq!(c.prefix, b"x");
    assert!(e.label().contains("via Sentinel s1:5000"), "{}", e.label());
    assert!(!format!("{c:?}").contains("pw\""));
    assert_eq!(ok(Mode::Sentinel, "s1/m").endpoints[0].info.db(), 0);
    for bad in ["s1:1,s2:2", "s1:1/", "s1/m/x", "s1,s1/m"] {
        assert!(parse(Mode::Sentinel, false, bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse(Mode::Sentinel, false, "s1:1").unwrap_err(),
        InvalidUrl::NoMaster
    );
}

#[test]
fn debug_hides_the_password() {
    let c = ok(Mode::Single, "u:hunter2@h:1");
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("***"), "{dbg}");
}

#[test]
fn bad_urls_are_typed_errors() {
    type Case = (Mode, &'static str, fn(&InvalidUrl) -> bool);
    let cases: &[Case] = &[
        (Mode::Single, "", |e| matches!(e, InvalidUrl::NoHost(_))),
        (Mode::Redlock, "?prefix=x", |e| {
            matches!(e, InvalidUrl::NoHost(_))
        }),
        (Mode::Single, "h:1,h:2", |e| {
            matches!(e, InvalidUrl::SeveralHosts)
        }),
        (Mode::Single, "h:port", |e| {
            matches!(e, InvalidUrl::BadHost { .. })
        }),
        (Mode::Single, "h:0", |e| {
            matches!(e, InvalidUrl::BadHost { .. })
        }),
        (Mode::Redlock, "h:1,,h:2", |e| {
            matches!(e, InvalidUrl::BadHost { .. })
        }),
        (Mode::Single, "[::1:7000", |e| {
            matches!(e, InvalidUrl::BadHost { .. })
        }),
        (Mode::Single, "h/db", |e| {
            matches!(e, InvalidUrl::BadDatabase(_))
        }),
        (Mode::Single, "h?bogus=1", |e| {
            matches!(e, InvalidUrl::UnknownOption(_))
        }),
        (Mode::Single, "h?timeout=soon", |e| {
            matches!(e, InvalidUrl::BadValue { .. })
        }),
        (Mode::Single, "h?timeout=0", |e| {
            matches!(e, InvalidUrl::BadValue { .. })
        }),
        (Mode::Single, "h?prefix=a&prefix=b", |e| {
            matches!(e, InvalidUrl::Repeated(_))
        }),
        (Mode::Single, "h?prefix=%zz", |e| {
            matches!(e, InvalidUrl::BadEncoding(_))
        }),
        (Mode::Single, "h#x", |e| matches!(e, InvalidUrl::Fragment)),
        (Mode::Redlock, "h:1,H:1,h:2", |e| {
            matches!(e, InvalidUrl::DuplicateHost(_))
        }),
    ];
    for (mode, rest, check) in cases {
        match parse(*mode, false, rest) {
            Ok(c) => panic!("{rest:?} parsed: {c:?}"),
            Err(e) => assert!(check(&e), "{rest:?}: unexpected {e:?}"),
        }
    }
}

#[test]
fn tls_options() {
    let c = parse(
        Mode::Single,
        true,
        "u:pw@h:1?ca=/a%20b/ca.pem&cert=/c&key=/k",
    )
    .unwrap();
    let want = TlsWanted {
        ca: Some("/a b/ca.pem".into()),
        client: Some(("/c".into(), "/k".into())),
    };
    assert_eq!(c.endpoints[0].tls_wanted.as_ref(), Some(&want));
    let c = parse(Mode::Single, true, "h?cacert=/ca").unwrap();
    assert_eq!(
        c.endpoints[0].tls_wanted.as_ref().unwrap().ca,
        Some("/ca".into())
    );
    assert_eq!(
        parse(Mode::Single, true, "h").unwrap().endpoints[0].tls_wanted,
        Some(TlsWanted::default())
    );
    assert!(
        parse(Mode::Single, false, "h").unwrap().endpoints[0]
            .tls_wanted
            .is_none()
    );
    // Redlock: rediss:// members or ?tls=on, all or none.
    for all in [
        "rediss://a:1,rediss://b:2,rediss://c:3",
        "u:p@rediss://a:1,rediss://b:2",
        "a:1,b:2?tls=on&ca=/ca",
    ] {
        let c = parse(Mode::Redlock, false, all).unwrap_or_else(|e| panic!("{all}: {e}"));
        assert!(c.endpoints.iter().all(|e| e.tls_wanted.is_some()), "{all}");
    }
    let c = parse(Mode::Redlock, false, "redis://a:1,b:2").unwrap();
    assert!(c.endpoints.iter().all(|e| e.tls_wanted.is_none()));
    type Case = (Mode, bool, &'static str, InvalidUrl);
    let cases: &[Case] = &[
        (
            Mode::Redlock,
            false,
            "rediss://a:1,b:2",
            InvalidUrl::MixedTls,
        ),
        (
            Mode::Redlock,
            false,
            "rediss://a:1,redis://b:2",
            InvalidUrl::MixedTls,
        ),
        (
            Mode::Redlock,
            false,
            "redis://a:1,b:2?tls=on",
            InvalidUrl::MixedTls,
        ),
        (
            Mode::Redlock,
            false,
            "rediss://a:1,rediss://b:2?tls=off",
            InvalidUrl::MixedTls,
        ),
        (
            Mode::Single,
            false,
            "h?ca=/ca",
            InvalidUrl::TlsOptionWithoutTls("ca"),
        ),
        (
            Mode::Redlock,
            false,
            "a,b?key=/k",
            InvalidUrl::TlsOptionWithoutTls("key"),
        ),
        (Mode::Single, true, "h?cert=/c", InvalidUrl::CertWithoutKey),
        (
            Mode::Single,
            true,
            "h?ca=/a&cacert=/b",
            InvalidUrl::Repeated("ca"),
        ),
        (
            Mode::Single,
            true,
            "h?tls=on",
            InvalidUrl::UnknownOption("tls".into()),
        ),
        (
            Mode::Sentinel,
            false,
            "s1/m?ca=/ca",
            InvalidUrl::TlsThroughSentinel,
        ),
        (
            Mode::Sentinel,
            false,
            "s1/m?tls=on",
            InvalidUrl::TlsThroughSentinel,
        ),
    ];
    for (mode, tls, rest, want) in cases {
        assert_eq!(
            parse(*mode, *tls, rest).err().as_ref(),
            Some(want),
            "{rest}"
        );
    }
}

#[test]
fn durations() {
    assert_eq!(
        parse_duration("timeout", "1m").unwrap(),
        Duration::from_secs(60)
    );
    assert_eq!(
        parse_duration("timeout", "750").unwrap(),
        Duration::from_millis(750)
    );
    assert!(parse_duration("timeout", "2h").is_err());
}

#[test]
fn fencing_is_on_by_default_and_can_be_turned_off_where_it_exists() {
    assert!(ok(Mode::Single, "h").fencing);
    assert!(ok(Mode::Single, "h?fencing=on").fencing);
    assert!(!ok(Mode::Single, "h?fencing=off").fencing);
    assert!(!ok(Mode::Sentinel, "s1/master?fencing=off").fencing);
    assert!(!ok(Mode::Redlock, "a,b,c").fencing, "Redlock has no tokens");
    for (mode, rest, want) in [
        (Mode::Single, "h?fencing=maybe", "expected on or off"),
        (Mode::Single, "h?fencing=on&fencing=off", "given twice"),
        (
            Mode::Redlock,
            "a,b,c?fencing=on",
            "Redlock has no fencing tokens",
        ),
    ] {
        let e = parse(mode, false, rest)
            .err()
            .unwrap_or_else(|| panic!("{rest} parsed"));
        assert!(e.to_string().contains(want), "{rest}: {e}");
    }
}
