//! Faults of configuration, certificates and process life: each refused at
//! start with a clear error naming the file; at reload the previous state
//! keeps serving and the log says why; signal storms lose no request; a
//! request in flight at SIGTERM is finished.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcgen::date_time_ymd;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use support::{Leaf, Served, TestCa, eventually, exchange_one, require_tool, served_config, write_atomic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A broken key/chain pair, and what the error must say.
struct Fault {
    what: &'static str,
    key: Vec<u8>,
    chain: Vec<u8>,
    /// In the message, besides the file's path.
    says: &'static str,
    /// Which file the message names.
    names_key: bool,
}

/// The DER of the key in `pem`.
fn der_of_key(pem: &str) -> Vec<u8> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .secret_der()
        .to_vec()
}

fn encrypted_key() -> Vec<u8> {
    let output = Command::new(require_tool("openssl", "openssl"))
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
        .args(["-aes-256-cbc", "-pass", "pass:lunch"])
        .output()
        .unwrap();
    assert!(output.status.success());
    output.stdout
}

fn faults(ca: &TestCa, good: &Leaf) -> Vec<Fault> {
    let other = ca.issue(&["lunch.test"], 9);
    let expired = ca.issue_with(&["lunch.test"], 10, |p| {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    let future = ca.issue_with(&["lunch.test"], 11, |p| {
        p.not_before = date_time_ymd(2099, 1, 1);
        p.not_after = date_time_ymd(2100, 1, 1);
    });
    let key = good.key_pem.as_bytes().to_vec();
    let chain = good.chain_pem.as_bytes().to_vec();
    vec![
        Fault {
            what: "an empty chain",
            key: key.clone(),
            chain: Vec::new(),
            says: "is empty",
            names_key: false,
        },
        Fault {
            what: "an empty key",
            key: b"\n".to_vec(),
            chain: chain.clone(),
            says: "is empty",
            names_key: true,
        },
        Fault {
            what: "the key of another certificate",
            key: other.key_pem.into_bytes(),
            chain: chain.clone(),
            says: "does not match the certificate",
            names_key: true,
        },
        Fault {
            what: "an expired certificate",
            key: expired.key_pem.into_bytes(),
            chain: expired.chain_pem.into_bytes(),
            says: "expired on 2021-01-01",
            names_key: false,
        },
        Fault {
            what: "a certificate not valid yet",
            key: future.key_pem.into_bytes(),
            chain: future.chain_pem.into_bytes(),
            says: "is not valid before 2099-01-01",
            names_key: false,
        },
        Fault {
            what: "a DER certificate",
            key: key.clone(),
            chain: good.der.clone(),
            says: "looks like binary DER, not PEM",
            names_key: false,
        },
        Fault {
            what: "a DER key",
            key: der_of_key(&good.key_pem),
            chain: chain.clone(),
            says: "looks like binary DER, not PEM",
            names_key: true,
        },
        Fault {
            what: "an encrypted key",
            key: encrypted_key(),
            chain: chain.clone(),
            says: "is an encrypted private key",
            names_key: true,
        },
        Fault {
            what: "a key in the chain file",
            key: key.clone(),
            chain: key.clone(),
            says: "has no certificate PEM block",
            names_key: false,
        },
        Fault {
            what: "a 10 MB chain",
            key: key.clone(),
            chain: [chain.clone(), vec![b'\n'; 10 * 1024 * 1024]].concat(),
            says: "is 10",
            names_key: false,
        },
        Fault {
            what: "garbage in the key",
            key: b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n".to_vec(),
            chain,
            says: "is not valid PEM",
            names_key: true,
        },
    ]
}

/// Runs lunchd (not socket-activated, on ephemeral ports should it start)
/// and returns its exit code and standard error.
fn run_lunchd(args: &[String], as_nobody: bool) -> (Option<i32>, String) {
    let mut command = if as_nobody {
        let mut c = Command::new(require_tool("setpriv", "util-linux"));
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", support::LUNCHD]);
        c
    } else {
        Command::new(support::LUNCHD)
    };
    let mut child = command
        .args(args)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
    (status, stderr)
}

fn config_for(dir: &Path, key: &Path, chain: &Path) -> PathBuf {
    let config = dir.join("lunchd.toml");
    let listen = "[http]\nlisten = \"127.0.0.1:0\"\n";
    let text = served_config(key, chain, "", listen).replace("[https]\n", "[https]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn certificate_faults_stop_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let good = ca.issue(&["lunch.test"], 1);
    for fault in faults(&ca, &good) {
        let key = dir.path().join("key.pem");
        let chain = dir.path().join("fullchain.pem");
        std::fs::write(&key, &fault.key).unwrap();
        std::fs::write(&chain, &fault.chain).unwrap();
        let config = config_for(dir.path(), &key, &chain);
        let (code, stderr) = run_lunchd(&[format!("--config={}", config.display())], false);
        let named = if fault.names_key { &key } else { &chain };
        assert_eq!(code, Some(1), "{}: {stderr}", fault.what);
        assert!(stderr.contains("lunchd: error: "), "{}: {stderr}", fault.what);
        assert!(stderr.contains(fault.says), "{}: {stderr}", fault.what);
        assert!(
            stderr.contains(&named.display().to_string()),
            "{}: {stderr}",
            fault.what
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn configuration_faults_stop_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = TestCa::new();
    let good = ca.issue(&["lunch.test"], 1);
    let (key, chain) = support::write_leaf(dir.path(), &good);
    let config = config_for(dir.path(), &key, &chain);
    let path = |name: &str| dir.path().join(name);
    let check = |config: &Path, says: &str, as_nobody: bool| {
        let (code, stderr) = run_lunchd(&[format!("--config={}", config.display())], as_nobody);
        assert_eq!(code, Some(1), "{}: {stderr}", config.display());
        assert!(stderr.contains(&config.display().to_string()), "{stderr}");
        assert!(stderr.contains(says), "expected {says:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };

    check(&path("missing.toml"), "cannot read: No such file or directory", false);
    std::fs::create_dir(path("directory.toml")).unwrap();
    check(&path("directory.toml"), "cannot read", false);
    std::fs::write(path("big.toml"), vec![b'#'; 10 * 1024 * 1024]).unwrap();
    check(&path("big.toml"), "a configuration is at most 1048576", false);
    std::fs::write(path("syntax.toml"), "[https\nkey = 1\n").unwrap();
    check(&path("syntax.toml"), "syntax.toml:1:", false);
    std::fs::write(path("binary.toml"), b"\xff\xfe\0\0garbage").unwrap();
    check(&path("binary.toml"), "cannot read", false);
    std::fs::write(path("limits.toml"), "[limits]\nmax_connections = 0\n").unwrap();
    check(
        &path("limits.toml"),
        "`limits.max_connections`: 0 is out of range",
        false,
    );

    // Files the service's user may not read, as under DynamicUser= with a
    // root-only file.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    check(&config, "cannot read: Permission denied", true);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&chain, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, stderr) = run_lunchd(&[format!("--config={}", config.display())], true);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read {}: Permission denied", key.display())),
        "{stderr}"
    );
}

/// How often the log says `needle`.
fn count(served: &Served, needle: &str) -> usize {
    served.lunchd.log().matches(needle).count()
}

async fn serial(served: &Served) -> String {
    served.connect(&[b"h2"]).await.serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_at_reload_keep_the_old_one() {
    let served = Served::start("", "").await;
    assert_eq!(serial(&served).await, served.leaf.serial);
    const FAILED: &str = "reload failed, still serving the previous configuration and certificate";
    let mut failures = 0;
    for fault in faults(&served.ca, &served.leaf) {
        write_atomic(&served.key, &fault.key);
        write_atomic(&served.chain, &fault.chain);
        served.lunchd.signal(libc::SIGHUP);
        failures += 1;
        eventually(Duration::from_secs(10), || async {
            (count(&served, FAILED) == failures).then_some(())
        })
        .await;
        let log = served.lunchd.log();
        let why = log.lines().rev().find(|l| l.contains(FAILED)).unwrap();
        assert!(why.contains(fault.says), "{}: {why}", fault.what);
        assert_eq!(serial(&served).await, served.leaf.serial, "{}", fault.what);
        served.assert_healthy().await;
    }
    // Files that vanish, or become unreadable.
    std::fs::remove_file(&served.key).unwrap();
    served.lunchd.signal(libc::SIGHUP);
    failures += 1;
    eventually(Duration::from_secs(10), || async {
        (count(&served, FAILED) == failures).then_some(())
    })
    .await;
    assert!(
        served
            .lunchd
            .log()
            .contains(&format!("cannot read {}", served.key.display()))
    );
    assert_eq!(serial(&served).await, served.leaf.serial);

    // A good certificate is then taken up.
    let next = served.ca.issue(&["lunch.test", "localhost"], 2);
    support::write_leaf(served.dir.path(), &next);
    served.lunchd.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), || async {
        (serial(&served).await == next.serial).then_some(())
    })
    .await;
    served.assert_healthy().await;
}

async fn lunch(served: &Served) -> String {
    let mut tls = served.connect(&[b"h2"]).await;
    let response = tls.get("localhost", "/api/lunch").await;
    assert_eq!(response.status, 200, "{}", response.body);
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    json["lunch"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_configuration_at_reload_keeps_the_old_menu() {
    let served = Served::start("", "[[dish]]\nname = \"Soup\"\n").await;
    assert_eq!(lunch(&served).await, "Soup");
    const FAILED: &str = "reload failed, still serving the previous configuration";
    let good = std::fs::read_to_string(&served.config).unwrap();
    let broken = [
        (
            "invalid TOML",
            "[[dish]\nname = \"Salad\"\n".to_owned(),
            "lunchd.toml:1:",
        ),
        (
            "an empty menu entry",
            format!("{good}\n[[dish]]\n"),
            "missing field `name`",
        ),
        (
            "a duplicate dish",
            format!("{good}\n[[dish]]\nname = \"soup\"\n"),
            "duplicates dish 1",
        ),
        (
            "a missing key",
            good.replace(&served.key.display().to_string(), "/nonexistent/key.pem"),
            "/nonexistent/key.pem",
        ),
        (
            "an unknown key",
            good.replace("[limits]\n", "[limits]\nmax_conections = 5\n"),
            "unknown field",
        ),
    ];
    for (i, (what, text, says)) in broken.iter().enumerate() {
        write_atomic(&served.config, text.as_bytes());
        served.lunchd.signal(libc::SIGHUP);
        eventually(Duration::from_secs(10), || async {
            (count(&served, FAILED) == i + 1).then_some(())
        })
        .await;
        let log = served.lunchd.log();
        let why = log.lines().rev().find(|l| l.contains(FAILED)).unwrap();
        assert!(why.contains(says), "{what}: {why}");
        assert_eq!(lunch(&served).await, "Soup", "{what}");
    }
    std::fs::remove_file(&served.config).unwrap();
    served.lunchd.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), || async {
        (count(&served, FAILED) == broken.len() + 1).then_some(())
    })
    .await;
    assert_eq!(lunch(&served).await, "Soup");

    write_atomic(&served.config, good.replace("Soup", "Salad").as_bytes());
    served.lunchd.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), || async {
        (lunch(&served).await == "Salad").then_some(())
    })
    .await;
    served.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_storm_under_load_fails_no_request() {
    let served = Arc::new(Served::start("", "").await);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for client in 0..4 {
        let (served, stop, done) = (Arc::clone(&served), Arc::clone(&stop), Arc::clone(&done));
        load.spawn(async move {
            // New connections (and so new handshakes) all the time, h2 and
            // HTTP/1.1, and the redirect.
            while !stop.load(Ordering::Relaxed) {
                let alpn: &[u8] = if client % 2 == 0 { b"h2" } else { b"http/1.1" };
                let mut tls = served.connect(&[alpn]).await;
                for _ in 0..5 {
                    let response = tls.get("localhost", "/api/lunch").await;
                    assert_eq!(response.status, 200, "{}", response.body);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let response = exchange_one(served.http(), b"GET / HTTP/1.1\r\nHost: lunch.test\r\n\r\n").await;
                assert!(response.starts_with("HTTP/1.1 301 "), "{response}");
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // A new certificate to swap in, so reloads change what is served.
    let next = served.ca.issue(&["lunch.test", "localhost"], 2);
    support::write_leaf(served.dir.path(), &next);
    eventually(Duration::from_secs(20), || async {
        (done.load(Ordering::Relaxed) > 20).then_some(())
    })
    .await;
    let before = done.load(Ordering::Relaxed);
    for _ in 0..100 {
        served.lunchd.signal(libc::SIGHUP);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Keep the load going until reloads have happened and requests continued.
    served
        .lunchd
        .wait_log("reloaded; listener addresses", Duration::from_secs(20));
    eventually(Duration::from_secs(20), || async {
        (done.load(Ordering::Relaxed) > before + 100).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    while let Some(result) = load.join_next().await {
        result.expect("a request failed during the SIGHUP storm");
    }
    assert_eq!(serial(&served).await, next.serial);
    let reloads = count(&served, "reloaded; listener addresses");
    eprintln!(
        "SIGHUP storm: {} requests, {reloads} reloads",
        done.load(Ordering::Relaxed)
    );
    assert!(!served.lunchd.log().contains("reload failed"));
    served.assert_healthy().await;
}

/// Whether the server's end of the loopback connection from `client` to
/// `server` has been read empty (`/proc/net/tcp`'s rx_queue is 0).
fn server_read_everything(server: u16, client: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 4
            && fields[1] == format!("0100007F:{server:04X}")
            && fields[2] == format!("0100007F:{client:04X}")
            && fields[4].split(':').nth(1) == Some("00000000")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight() {
    let mut served = Served::start("drain_timeout = 20\nheader_timeout = 30", "").await;
    // Half a request, the rest after SIGTERM. (hyper treats a connection
    // whose bytes it has not read yet as idle and closes it at shutdown, so
    // wait until it has read them.)
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", served.http()))
        .await
        .unwrap();
    plain
        .write_all(b"GET /in-flight HTTP/1.1\r\nHost: lunch.")
        .await
        .unwrap();
    let client = plain.local_addr().unwrap().port();
    let http = served.http();
    eventually(Duration::from_secs(10), || async {
        server_read_everything(http, client).then_some(())
    })
    .await;
    // An idle HTTP/2 connection is told to go away.
    let mut idle = served.connect(&[b"h2"]).await;
    assert_eq!(idle.get("localhost", "/healthz").await.status, 200);

    served.lunchd.signal(libc::SIGTERM);
    served
        .lunchd
        .wait_log("stopping: finishing in-flight requests", Duration::from_secs(10));
    plain.write_all(b"test\r\n\r\n").await.unwrap();
    // The answer comes, then the connection closes (read_to_string ends).
    let mut response = String::new();
    plain.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 301 "), "{response}");
    assert!(response.contains("/in-flight\r\n"), "{response}");

    assert_eq!(served.lunchd.wait_exit(Duration::from_secs(60)), Some(0));
    served.lunchd.wait_log("stopped", Duration::from_secs(1));
    // Both connections ended before the drain deadline: the idle one was
    // closed, not waited for.
    assert!(
        !served.lunchd.log().contains("drain deadline passed"),
        "{}",
        served.lunchd.log()
    );
    drop(idle);
    served.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_a_stuck_request_the_drain_deadline() {
    let mut served = Served::start("drain_timeout = 1\nheader_timeout = 30", "").await;
    let mut stuck = tokio::net::TcpStream::connect(("127.0.0.1", served.http()))
        .await
        .unwrap();
    stuck.write_all(b"GET / HTTP/1.1\r\nHost: lunch.").await.unwrap();
    let (http, client) = (served.http(), stuck.local_addr().unwrap().port());
    eventually(Duration::from_secs(10), || async {
        server_read_everything(http, client).then_some(())
    })
    .await;
    served.lunchd.signal(libc::SIGTERM);
    assert_eq!(served.lunchd.wait_exit(Duration::from_secs(20)), Some(0));
    let log = served.lunchd.log();
    assert!(
        log.contains("drain deadline passed; closing the remaining connections"),
        "{log}"
    );
    let mut rest = Vec::new();
    let _ = stuck.read_to_end(&mut rest).await;
    served.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_other_names_is_refused() {
    // At start: the redirect's canonical host must be on the certificate.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (key, chain) = support::write_leaf(dir.path(), &ca.issue(&["other.test"], 1));
    let config = config_for(dir.path(), &key, &chain);
    for extra in [
        "canonical_host = \"lunch.test\"",
        "allowed_hosts = [\"other.test\", \"*.lunch.test\"]",
    ] {
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace("[http]\n", &format!("[http]\n{extra}\n"));
        let with = dir.path().join("names.toml");
        std::fs::write(&with, text).unwrap();
        let (code, stderr) = run_lunchd(&[format!("--config={}", with.display())], false);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "the certificate in {} is for other.test but not `",
                chain.display()
            )),
            "{stderr}"
        );
    }

    // At reload: the previous certificate stays.
    let served = Served::start("", "[http]\ncanonical_host = \"lunch.test\"\n").await;
    support::write_leaf(served.dir.path(), &served.ca.issue(&["other.test"], 12));
    served.lunchd.signal(libc::SIGHUP);
    served.lunchd.wait_log(
        "is for other.test but not `lunch.test` ([http] canonical_host)",
        Duration::from_secs(10),
    );
    assert_eq!(serial(&served).await, served.leaf.serial);
    served.assert_healthy().await;
}
