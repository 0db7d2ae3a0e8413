//! The ssh layer against a real sshd on loopback, and its pure parts.

use super::*;

#[test]
fn a_reply_without_a_message_says_what_its_status_means() {
    let quiet = |code| Reply {
        code,
        stdout: String::new(),
        stderr: "\n".into(),
    };
    assert!(
        quiet(255)
            .last_error()
            .contains("sshd is not running there")
    );
    assert_eq!(quiet(3).last_error(), "exit 3, with no error message");
    let said = Reply {
        code: 255,
        stdout: String::new(),
        stderr: "ssh: connect to host h port 22: Connection refused\n\n".into(),
    };
    assert_eq!(
        said.last_error(),
        "ssh: connect to host h port 22: Connection refused"
    );
}

#[test]
fn no_more_masters_authenticate_at_once_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Each connection notes how many are under way, takes a moment, then fails.
    let proxy = dir.path().join("counting-proxy");
    let d = dir.path().display();
    std::fs::write(
        &proxy,
        format!(
            "#!/bin/sh\nmkdir {d}/in.$$; ls -d {d}/in.* | wc -l >> {d}/counts\nsleep 0.2; rmdir {d}/in.$$\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&proxy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = format!("-F /dev/null -oProxyCommand={}", proxy.display());
    let ssh = Ssh::new(&opts, dir.path()).with_handshake_limit(2);
    let hosts: Vec<Endpoint> = (1..=5)
        .map(|i| Endpoint {
            address: format!("192.0.2.{i}"),
            ..host()
        })
        .collect();
    // Started ahead: two, the limit; the others open in their turn.
    for h in &hosts {
        ssh.prewarm(h);
    }
    assert_eq!(ssh.pending.lock().unwrap().len(), 2);
    std::thread::scope(|scope| {
        for h in &hosts {
            scope.spawn(|| assert!(ssh.ensure_master(h).is_err()));
        }
    });
    let counts = std::fs::read_to_string(dir.path().join("counts")).unwrap();
    let counts: Vec<usize> = counts.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.iter().all(|&n| n <= 2), "{counts:?}");
    assert_eq!(*ssh.handshakes.lock().unwrap(), 0);
}

#[test]
fn closing_stops_the_connections_under_way() {
    let dir = tempfile::tempdir().unwrap();
    // A host that never answers: its connections stall until their timeouts (15
    // and 20 s here); each proxy leaves a mark once its ssh has gone.
    let proxy = dir.path().join("silent-proxy");
    let d = dir.path().display();
    std::fs::write(
        &proxy,
        format!("#!/bin/sh\ntouch {d}/started.$$\ncat >/dev/null\ntouch {d}/ended.$$\n"),
    )
    .unwrap();
    std::fs::set_permissions(&proxy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = format!("-F /dev/null -oProxyCommand={}", proxy.display());
    let ssh = Ssh::new(&opts, dir.path());
    let marks = |prefix: &str| {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .count()
    };
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        let opening = scope.spawn(|| ssh.ensure_master(&host()));
        let confirming =
            scope.spawn(|| ssh.run_fresh(&host(), "true", None, Duration::from_secs(20)));
        while marks("started.") < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no connection started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        ssh.close_all();
        assert!(opening.join().unwrap().is_err());
        assert!(confirming.join().unwrap().is_err());
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the run's end waited for the connections' timeouts"
    );
    while marks("ended.") < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a connection outlived the run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn host() -> Endpoint {
    Endpoint {
        name: "web1".into(),
        user: "root".into(),
        // Never reached: nothing may connect once the run is closing.
        address: "192.0.2.1".into(),
    }
}

#[test]
fn once_closing_no_master_opens_and_no_work_ahead_starts() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = Ssh::new("", dir.path());
    let work = ssh.hold_ahead(host(), "true");
    assert_eq!(ssh.close_all(), Closed::default());
    let refused = ssh.ensure_master(&host()).unwrap_err();
    assert!(matches!(refused, Error::Closing), "{refused}");
    // Work handed out before the close does nothing when it runs after.
    work();
    assert!(!ssh.is_open(&host()));
    // Nor does any session or new connection start: with its master ended, a
    // session would connect by itself.
    let closing = |r: Result<(), Error>| matches!(r, Err(Error::Closing));
    assert!(closing(ssh.run(&host(), "true").map(drop)));
    assert!(closing(ssh.hold(&host(), "true").map(drop)));
    assert!(closing(
        ssh.run_fresh(&host(), "true", None, Duration::from_secs(1))
            .map(drop)
    ));
}
