//! `cargo xtask e2e --cluster`: three lunchd nodes behind HAProxy, on a
//! private network that exists only for the run.
//!
//! The network is made of network namespaces (`ip netns`): `lan` holds a
//! bridge with the balancer's address 10.77.0.1 and runs HAProxy (the host's
//! Debian package) in TCP mode, TLS passthrough; nodes n1 to n3
//! (10.77.0.11-13) are each a systemd 252 container (the host's `/usr`)
//! booted into their own namespace, with lunchd installed by
//! `cargo xtask install-units`; the client (10.77.0.100) sends a steady load
//! through HAProxy. Each namespace is joined to the bridge by a veth pair;
//! nothing is routed off the bridge, so no traffic leaves the machine.
//!
//! n1 is the ACME node: pebble and certbot run there, HAProxy sends
//! `/.well-known/acme-challenge/` on port 80 to it, and after each issuance
//! the run (standing in for the operator's file transport, scp or rsync
//! from a deploy hook) copies the new key and chain into the other nodes'
//! `/etc/letsencrypt/live/DOMAIN/` and runs lunchd's deploy hook there.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::acme::{self, Pebble};
use super::client::{self, Load, Tls, TlsConnection};
use super::container::{self, Boot, Container, Root};
use super::steps::{self, CONFIGURE_WEBROOT, DEPLOY_HOOK, LOAD_INTERVAL, RENEW, SERVICE, SOCKETS};

/// The prefix of every network namespace, machine and interface the run
/// makes, so an interrupted run's leftovers can be found.
const PREFIX: &str = "lunchd-e2e";
const NODES: u8 = 3;
const LB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// HAProxy's statistics page (CSV at `/stats;csv`).
const STATS_PORT: u16 = 8404;

fn node_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + i)
}

fn netns_name(host: &str) -> String {
    format!("{PREFIX}-{host}")
}

fn netns_path(host: &str) -> PathBuf {
    Path::new("/run/netns").join(netns_name(host))
}

/// The HAProxy configuration the run tests (also in docs/scale-out.md).
/// `retries`, `option redispatch 1` and `timeout connect` are what makes
/// a dead node cost no request that had not reached it yet.
pub(crate) fn haproxy_config(domain: &str, nodes: &[(String, Ipv4Addr)]) -> String {
    let mut https = String::new();
    let mut http = String::new();
    for (name, addr) in nodes {
        let _ = writeln!(https, "    server {name} {addr}:443");
        let _ = writeln!(http, "    server {name} {addr}:80");
    }
    let (acme_name, acme_addr) = &nodes[0];
    format!(
        "global
    maxconn 4000

defaults
    timeout connect 500ms
    timeout client 10s
    timeout server 10s
    timeout check 1s
    # A connection that cannot be made is tried again, on another node.
    retries 3
    option redispatch 1

# Port 443: TLS passthrough; lunchd terminates TLS itself.
frontend https
    mode tcp
    bind {LB}:443
    default_backend lunchd_https

backend lunchd_https
    mode tcp
    balance roundrobin
    # A TLS health check of lunchd's own /healthz.
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host {domain}
    http-check expect status 200
    default-server check check-ssl verify none check-sni {domain} inter 500ms fall 2 rise 2
{https}
# Port 80: ACME challenges go to the node that runs certbot; the rest is
# lunchd's redirect, from any node.
frontend http
    mode http
    bind {LB}:80
    acl acme_challenge path_beg /.well-known/acme-challenge/
    use_backend acme if acme_challenge
    default_backend lunchd_http

backend acme
    mode http
    server {acme_name} {acme_addr}:80

backend lunchd_http
    mode http
    balance roundrobin
    default-server check inter 500ms fall 2 rise 2
{http}
listen stats
    mode http
    bind {LB}:{STATS_PORT}
    stats enable
    stats uri /stats
"
    )
}

/// The run's network namespaces and links; dropping it deletes them.
struct Network {
    names: Vec<String>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Network {
    /// `lan` with the bridge, and one namespace per host joined to it.
    fn create(hosts: &[(String, Ipv4Addr)]) -> anyhow::Result<Network> {
        let mut net = Network { names: Vec::new() };
        let lan = netns_name("lan");
        ip(&["netns", "add", &lan])?;
        net.names.push(lan.clone());
        ip(&["-n", &lan, "link", "set", "lo", "up"])?;
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan, "addr", "add", &format!("{LB}/24"), "dev", "br0"])?;
        ip(&["-n", &lan, "link", "set", "br0", "up"])?;
        for (host, addr) in hosts {
            let ns = netns_name(host);
            ip(&["netns", "add", &ns])?;
            net.names.push(ns.clone());
            let port = format!("v{host}");
            ip(&[
                "-n", &lan, "link", "add", &port, "type", "veth", "peer", "name", "host0", "netns", &ns,
            ])?;
            ip(&["-n", &lan, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "host0"])?;
            ip(&["-n", &ns, "link", "set", "host0", "up"])?;
        }
        Ok(net)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for name in self.names.drain(..).rev() {
            if let Err(e) = ip(&["netns", "delete", &name]) {
                eprintln!("xtask: {e:#}");
            }
        }
    }
}

/// Deletes the network namespaces an interrupted run left.
fn remove_leftover_netns() -> anyhow::Result<bool> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Ok(false);
    };
    let mut any = false;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{PREFIX}-")) {
            ip(&["netns", "delete", &name])?;
            any = true;
        }
    }
    Ok(any)
}

/// HAProxy in the `lan` namespace; dropping it ends it.
struct Haproxy {
    child: Child,
}

impl Haproxy {
    fn start(config: &Path, log: &Path) -> anyhow::Result<Haproxy> {
        let log = std::fs::File::create(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &netns_name("lan"), "haproxy", "-db", "-f"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy")?;
        Ok(Haproxy { child })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One row of HAProxy's statistics.
#[derive(Debug, Clone)]
struct Stat {
    proxy: String,
    server: String,
    status: String,
    /// Sessions so far (`stot`).
    sessions: u64,
    /// Connection retries to this server (`wretr`).
    retries: u64,
    /// Requests sent elsewhere after a failure here (`wredis`).
    redispatches: u64,
}

/// HAProxy's statistics, read from the client's namespace.
fn stats() -> anyhow::Result<Vec<Stat>> {
    let csv = container::in_netns(&netns_path("client"), || -> anyhow::Result<String> {
        let mut tcp = TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(LB, STATS_PORT)),
            Duration::from_secs(2),
        )?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.write_all(b"GET /stats;csv HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
        let response = client::read_response(&mut tcp)?;
        ensure!(response.status == 200, "haproxy's stats: status {}", response.status);
        Ok(response.body)
    })??;
    let mut rows = Vec::new();
    for line in csv.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        rows.push(Stat {
            proxy: f.first().copied().unwrap_or_default().to_owned(),
            server: f.get(1).copied().unwrap_or_default().to_owned(),
            status: f.get(17).copied().unwrap_or_default().to_owned(),
            sessions: num(7),
            retries: num(15),
            redispatches: num(16),
        });
    }
    Ok(rows)
}

fn https_servers() -> anyhow::Result<Vec<Stat>> {
    Ok(stats()?
        .into_iter()
        .filter(|s| s.proxy == "lunchd_https" && s.server != "BACKEND")
        .collect())
}

/// A lunchd node.
struct Node {
    name: String,
    addr: Ipv4Addr,
    c: Option<Container>,
}

impl Node {
    fn c(&self) -> anyhow::Result<&Container> {
        self.c.as_ref().with_context(|| format!("{} is powered off", self.name))
    }
}

/// Requests sent and failed in one step, for the summary.
#[derive(Default)]
struct Tally {
    lines: Vec<String>,
}

/// Runs the cluster, prints its summary; fails if a step failed.
pub(crate) fn run(args: &super::Args) -> anyhow::Result<()> {
    let started = Instant::now();
    super::preflight(&super::GENERATIONS[..1])?;
    if !crate::system::on_path("haproxy") {
        crate::system::apt_install("e2e --cluster", &["haproxy"])?;
    }
    ensure!(crate::system::on_path("ip"), "`ip` is missing; install iproute2");
    super::catch_interrupts();
    if container::remove_leftovers()? | remove_leftover_netns()? {
        println!("e2e: removed the leftovers of an interrupted earlier run");
    }
    let root = crate::project_root();
    let staging = root.join("target/e2e-cluster");
    super::remove_staging(&staging)?;
    std::fs::create_dir_all(&staging)?;
    let t = Instant::now();
    crate::install::build_release(&root)?;
    println!(
        "e2e: release build of lunchd ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut tally = Tally::default();
    let outcome = cluster(args, &staging, &mut tally);
    let cleanup = super::remove_staging(&staging);
    println!("\ne2e: ==== cluster summary ====");
    for line in &tally.lines {
        println!("e2e:     {line}");
    }
    println!("e2e: {:.1} s in total", started.elapsed().as_secs_f64());
    outcome?;
    cleanup?;
    Ok(())
}

fn cluster(args: &super::Args, staging: &Path, tally: &mut Tally) -> anyhow::Result<()> {
    let domain = args.domain.as_str();
    let mut hosts: Vec<(String, Ipv4Addr)> = (1..=NODES).map(|i| (format!("n{i}"), node_addr(i))).collect();
    hosts.push(("client".to_owned(), CLIENT));
    let _network = Network::create(&hosts)?;
    println!(
        "e2e: network: bridge {LB}/24 in netns {}, nodes {}, client {CLIENT}",
        netns_name("lan"),
        hosts[..NODES as usize]
            .iter()
            .map(|(n, a)| format!("{n} {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let binds = super::workspace_binds()?;
    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    let mut nodes = Vec::new();
    for (name, addr) in &hosts[..NODES as usize] {
        let dir = staging.join(name);
        let usr_local = dir.join("usr-local");
        std::fs::create_dir_all(&usr_local)?;
        let t = Instant::now();
        let machine = format!("{PREFIX}-{name}");
        let ns = netns_path(name);
        let c = Container::boot(&Boot {
            root: Root::Host { usr_local: &usr_local },
            binds: &binds,
            log: &dir.join("console.log"),
            machine: &machine,
            netns: Some(&ns),
        })?;
        c.run_within(
            180,
            &[
                &xtask.to_string_lossy(),
                "install-units",
                "--domain",
                domain,
                "--no-build",
            ],
        )?;
        c.sh(CONFIGURE_WEBROOT)?;
        println!(
            "e2e: {name} ({addr}): booted systemd {}, lunchd installed ({:.1} s)",
            c.run(&["systemctl", "show", "-P", "Version"])?.trim(),
            t.elapsed().as_secs_f64()
        );
        nodes.push(Node {
            name: name.clone(),
            addr: *addr,
            c: Some(c),
        });
    }

    // The first certificate, on the ACME node, from certbot's own server.
    let acme_node = nodes[0].c()?;
    let pebble = Pebble::start(acme_node, domain)?;
    acme::certbot(
        acme_node,
        &steps::docs_command("certbot certonly --standalone", domain)?,
    )?;
    let first = acme::live(acme_node, domain)?;
    deliver(&nodes, domain)?;
    for node in &nodes {
        let mut argv = vec!["systemctl", "enable", "--now"];
        argv.extend(SOCKETS);
        node.c()?.run(&argv)?;
    }
    // From now on pebble reaches the domain through the balancer, as a
    // real CA would.
    std::fs::write(
        acme_node.root().join("etc/hosts"),
        format!("127.0.0.1\tlocalhost\n{LB}\t{domain}\n"),
    )?;
    let tls = Tls::new(&pebble.root_der, domain)?;

    let config = staging.join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(domain, &hosts[..NODES as usize]))?;
    let version = Command::new("haproxy").arg("-v").output()?;
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let _haproxy = Haproxy::start(&config, &staging.join("haproxy.log"))?;
    steps::wait_for("HAProxy to see every node up", Duration::from_secs(30), || {
        let servers = https_servers().unwrap_or_default();
        Ok((servers.len() == NODES as usize && servers.iter().all(|s| s.status == "UP")).then_some(()))
    })
    .with_context(|| {
        format!(
            "haproxy's log:\n{}",
            std::fs::read_to_string(staging.join("haproxy.log")).unwrap_or_default()
        )
    })?;
    println!("e2e: {version} in netns {}: every node UP", netns_name("lan"));
    tally
        .lines
        .push(format!("{version}; {}", acme::certbot_version(acme_node)));
    tally
        .lines
        .push(format!("first serial {} (certonly --standalone on n1)", first.serial));

    let mut failed = Vec::new();
    let mut step = |title: &str, f: &mut dyn FnMut() -> anyhow::Result<String>| {
        print!("e2e: {title} ... ");
        let _ = std::io::stdout().flush();
        let t = Instant::now();
        match f() {
            Ok(detail) => {
                println!("PASS ({:.1} s)", t.elapsed().as_secs_f64());
                for line in detail.lines() {
                    println!("e2e:        {line}");
                }
                tally
                    .lines
                    .push(format!("PASS {title}: {}", detail.lines().next().unwrap_or_default()));
            }
            Err(e) => {
                println!("FAIL ({:.1} s)", t.elapsed().as_secs_f64());
                for line in format!("{e:#}").lines() {
                    println!("e2e:        {line}");
                }
                tally.lines.push(format!("FAIL {title}: {e:#}"));
                failed.push(title.to_owned());
            }
        }
    };

    step("the daily pick is the same from every node", &mut || {
        let mut picks = Vec::new();
        for node in &nodes {
            let mut conn = TlsConnection::open(&tls, connect_from_client(node.addr, 443)?)?;
            let response = conn.get("/api/today")?;
            ensure!(response.status == 200, "{}: status {}", node.name, response.status);
            let etag = response.header("etag").unwrap_or_default().to_owned();
            picks.push((node.name.clone(), steps::dish_of(&response.body)?, etag));
        }
        ensure!(
            picks.iter().all(|(_, d, e)| (d, e) == (&picks[0].1, &picks[0].2)),
            "the nodes disagree: {picks:?}"
        );
        // And through the balancer, which spreads the requests.
        let mut through = Vec::new();
        for _ in 0..6 {
            let mut conn = TlsConnection::open(&tls, connect_from_client(LB, 443)?)?;
            through.push(steps::dish_of(&conn.get("/api/today")?.body)?);
        }
        ensure!(
            through.iter().all(|d| *d == picks[0].1),
            "through HAProxy: {through:?}, the nodes: {picks:?}"
        );
        Ok(format!(
            "{:?} (ETag {}) from n1, n2, n3 directly and 6 times through HAProxy",
            picks[0].1, picks[0].2
        ))
    });

    step(
        "a rolling `systemctl restart lunchd` under load: zero failed",
        &mut || {
            let (load, pids) = under_load(&tls, || {
                let mut pids = Vec::new();
                for node in &nodes {
                    let c = node.c()?;
                    let old = main_pid(c)?;
                    c.run(&["systemctl", "restart", SERVICE])?;
                    let new = wait_active(c, old)?;
                    pids.push(format!("{} {old}->{new}", node.name));
                    std::thread::sleep(Duration::from_millis(300));
                }
                Ok(pids)
            })?;
            ensure!(load.answered > 0, "no request answered");
            ensure!(
                load.refused == 0 && load.failed.is_empty(),
                "{} sent, {} refused, {} failed: {:?}",
                load.attempts,
                load.refused,
                load.failed.len(),
                load.failed
            );
            Ok(format!(
                "{} requests sent, {} answered, 0 failed; PIDs {}",
                load.attempts,
                load.answered,
                pids.join(", ")
            ))
        },
    );

    let mut issued = vec![first.der.clone()];
    step(
        "a renewal on the ACME node, through HAProxy's port 80, delivered to all three: new serial everywhere, zero failed",
        &mut || {
            let acme_node = nodes[0].c()?;
            let challenges = || -> anyhow::Result<u64> {
                Ok(stats()?
                    .iter()
                    .find(|s| s.proxy == "acme" && s.server == "BACKEND")
                    .map_or(0, |s| s.sessions))
            };
            let before = challenges()?;
            let (load, serial) = under_load(&tls, || {
                // certonly --webroot moves renewals to the webroot (the
                // standalone server cannot bind port 80 any more); then the
                // renewal as certbot.timer runs it.
                acme::certbot(acme_node, &steps::docs_command("certbot certonly --webroot", domain)?)?;
                acme::certbot(acme_node, RENEW)?;
                let live = acme::live(acme_node, domain)?;
                ensure!(!issued.contains(&live.der), "certbot issued nothing new");
                issued.push(live.der.clone());
                deliver(&nodes, domain)?;
                for node in &nodes {
                    steps::wait_for(
                        &format!("{} to serve serial {}", node.name, live.serial),
                        Duration::from_secs(15),
                        || Ok((served(&tls, node.addr).ok().as_ref() == Some(&live.der)).then_some(())),
                    )?;
                }
                Ok(live.serial)
            })?;
            ensure!(
                load.refused == 0 && load.failed.is_empty(),
                "{} sent, {} refused, {} failed: {:?}",
                load.attempts,
                load.refused,
                load.failed.len(),
                load.failed
            );
            let through = challenges()? - before;
            ensure!(
                through >= 2,
                "HAProxy's acme backend saw {through} requests; pebble's validations did not come through it"
            );
            Ok(format!(
                "serial {serial} served by n1, n2 and n3; {} requests sent, {} answered, 0 failed; \
                 {through} challenge requests from pebble through HAProxy's acme backend",
                load.attempts, load.answered
            ))
        },
    );

    step(
        "n3 powered off under load: HAProxy routes around it; failed <= the requests in flight on n3 (1)",
        &mut || {
            let before = https_servers()?;
            let (load, down_after) = under_load(&tls, || {
                // A power cut: n3's link goes first (its packets are lost, as
                // with a dead machine), then the machine.
                ip(&["-n", &netns_name("lan"), "link", "set", "vn3", "down"])?;
                let cut = Instant::now();
                // Not through `nodes` (borrowed): poweroff inside.
                nodes[2].c()?.run(&["systemctl", "poweroff", "--no-block"])?;
                steps::wait_for("HAProxy to mark n3 DOWN", Duration::from_secs(10), || {
                    Ok(https_servers()?
                        .iter()
                        .any(|s| s.server == "n3" && s.status.starts_with("DOWN"))
                        .then_some(()))
                })?;
                let down_after = cut.elapsed().as_secs_f64();
                // Load on the two that are left.
                std::thread::sleep(Duration::from_secs(1));
                Ok(down_after)
            })?;
            let after = https_servers()?;
            let counter = |rows: &[Stat], f: fn(&Stat) -> u64| rows.iter().find(|s| s.server == "n3").map_or(0, f);
            let retries = counter(&after, |s| s.retries) - counter(&before, |s| s.retries);
            let redispatches = counter(&after, |s| s.redispatches) - counter(&before, |s| s.redispatches);
            ensure!(load.answered > 0, "no request answered");
            // One client, one request at a time: at most one was on n3 when
            // it went; every later one is retried elsewhere by HAProxy.
            ensure!(
                load.refused + load.failed.len() <= 1,
                "{} sent, {} refused, {} failed (at most 1 was in flight on n3): {:?}",
                load.attempts,
                load.refused,
                load.failed.len(),
                load.failed
            );
            Ok(format!(
                "{} requests sent, {} answered, {} failed {:?}; n3 DOWN in HAProxy {down_after:.1} s after the cut; \
                 {retries} connection retries and {redispatches} redispatches away from n3",
                load.attempts,
                load.answered,
                load.failed.len(),
                load.failed
            ))
        },
    );
    if let Some(c) = nodes[2].c.take() {
        c.shut_down()?;
    }

    // Reported, not failed: it needs lunchd to read the PROXY protocol.
    let not_run = "NOT RUN the client's address in lunchd's per-client limit and access log: \
                   lunchd does not read PROXY protocol v2 yet, so HAProxy sends none (TLS passthrough)";
    println!("e2e: {not_run}");
    tally.lines.push(not_run.to_owned());

    for node in &mut nodes {
        if let Some(c) = node.c.take() {
            c.shut_down()?;
        }
    }
    println!("e2e: nodes powered off and removed");
    if !failed.is_empty() {
        bail!("{} cluster steps failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

/// Copies the ACME node's live key and chain into the other nodes'
/// `/etc/letsencrypt/live/DOMAIN/` and runs lunchd's deploy hook on each.
fn deliver(nodes: &[Node], domain: &str) -> anyhow::Result<()> {
    let from = nodes[0].c()?.root().join("etc/letsencrypt/live").join(domain);
    for node in &nodes[1..] {
        let Some(c) = &node.c else { continue };
        let live = c.root().join("etc/letsencrypt/live");
        let dir = live.join(domain);
        std::fs::create_dir_all(&dir)?;
        for d in [live.parent().unwrap_or(&live), &live, &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
        for file in ["privkey.pem", "fullchain.pem", "cert.pem", "chain.pem"] {
            let data = std::fs::read(from.join(file)).with_context(|| format!("reading n1's {file}"))?;
            let tmp = dir.join(format!(".{file}.new"));
            std::fs::write(&tmp, data)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, dir.join(file))?;
        }
        c.run(&[
            "env",
            &format!("RENEWED_LINEAGE=/etc/letsencrypt/live/{domain}"),
            DEPLOY_HOOK,
        ])?;
    }
    Ok(())
}

fn connect_from_client(addr: Ipv4Addr, port: u16) -> anyhow::Result<TcpStream> {
    let tcp = container::in_netns(&netns_path("client"), || {
        TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(addr, port)), Duration::from_secs(5))
    })??;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(tcp)
}

/// The certificate `addr` presents, DER.
fn served(tls: &Tls, addr: Ipv4Addr) -> anyhow::Result<Vec<u8>> {
    TlsConnection::open(tls, connect_from_client(addr, 443)?)?
        .peer_certificate()
        .context("no peer certificate")
}

fn main_pid(c: &Container) -> anyhow::Result<u32> {
    c.run(&["systemctl", "show", "-P", "MainPID", SERVICE])?
        .trim()
        .parse()
        .context("MainPID is not a number")
}

fn wait_active(c: &Container, old: u32) -> anyhow::Result<u32> {
    steps::wait_for("lunchd to be active again", Duration::from_secs(20), || {
        let pid = main_pid(c)?;
        let state = c.output(&["systemctl", "is-active", SERVICE])?;
        let active = String::from_utf8_lossy(&state.stdout).trim() == "active";
        Ok((active && pid != 0 && pid != old).then_some(pid))
    })
}

/// Runs `action` while the client sends a request through HAProxy every
/// 10 ms, each on a new TLS connection.
fn under_load<T>(tls: &Tls, action: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Load, T)> {
    let stop = AtomicBool::new(false);
    let ns = netns_path("client");
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            client::load_at(
                &ns,
                SocketAddr::V4(SocketAddrV4::new(LB, 443)),
                tls,
                LOAD_INTERVAL,
                &stop,
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let result = action();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let load = load.join().map_err(|_| anyhow::anyhow!("the load client panicked"))??;
        Ok((load, result?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_config_names_every_node_and_sends_challenges_to_the_first() {
        let nodes: Vec<(String, Ipv4Addr)> = (1..=3).map(|i| (format!("n{i}"), node_addr(i))).collect();
        let config = haproxy_config("lunchd.test", &nodes);
        for i in 1..=3 {
            assert!(config.contains(&format!("server n{i} 10.77.0.1{i}:443\n")), "{config}");
        }
        let acme = config.split("\nbackend acme\n").nth(1).unwrap();
        assert!(
            acme.trim_start().starts_with("mode http\n    server n1 10.77.0.11:80"),
            "{acme}"
        );
        assert!(config.contains("check-sni lunchd.test"));
        assert!(config.contains("option redispatch 1"));
    }
}
