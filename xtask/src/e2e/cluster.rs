//! `cargo xtask e2e --cluster`: three lunchd nodes behind HAProxy, on a
//! private network that exists only for the run.
//!
//! The network is made of network namespaces (`ip netns`): `lan` holds a
//! bridge with the balancer's address 10.77.0.1 and runs HAProxy (the host's
//! Debian package) in TCP mode, TLS passthrough; nodes n1 to n3
//! (10.77.0.11-13) are each a systemd 252 container (the host's `/usr`)
//! booted into their own namespace, with lunchd installed by
//! `cargo xtask install-units`; the client (10.77.0.100) sends a steady load
//! through HAProxy, and a second client (10.77.0.101) is another person
//! behind it. Each namespace is joined to the bridge by a veth pair;
//! nothing is routed off the bridge, so no traffic leaves the machine.
//!
//! HAProxy sends PROXY protocol v2 headers (`send-proxy-v2`, and
//! `check-send-proxy` on its TLS health checks), and each node trusts
//! only HAProxy's address (`[proxy] from`): the run talks to one node
//! directly as HAProxy's health checks do, from its address with a LOCAL
//! header.
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
/// Another client behind HAProxy, for what one client's limit must not
/// touch.
const CLIENT2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 101);
/// Each node's `[limits] max_connections_per_client`: small, so that the
/// run can reach it, but above what pebble's validations hold open at
/// once through HAProxy's keep-alive connections to n1 (they come from
/// n1's address, and with 4 a renewal's challenge got a 502).
const PER_CLIENT: usize = 16;
/// What the run asks for under load: a client's request, not `/healthz`,
/// which fails on purpose while a node stops.
const LOAD_PATH: &str = "/api/today";
/// HAProxy's statistics page (CSV at `/stats;csv`).
const STATS_PORT: u16 = 8404;

fn node_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + i)
}

/// What each node changes in the installed /etc/lunchd/lunchd.toml:
/// HAProxy is the only peer (`[proxy] from`), the access log is on, and
/// the per-client limit is small enough to reach.
fn node_config() -> String {
    format!(
        "sed -i -e 's|^#max_connections_per_client = .*|max_connections_per_client = {PER_CLIENT}|' \
         -e 's|^#access = false|access = true|' /etc/lunchd/lunchd.toml && \
         printf '\\n[proxy]\\nfrom = [\"{LB}/32\"]\\n' >> /etc/lunchd/lunchd.toml && \
         /usr/local/bin/lunchd check-config /etc/lunchd/lunchd.toml"
    )
}

fn netns_name(host: &str) -> String {
    format!("{PREFIX}-{host}")
}

fn netns_path(host: &str) -> PathBuf {
    Path::new("/run/netns").join(netns_name(host))
}

/// The HAProxy configuration the run tests (also in docs/scale-out.md).
/// `retries`, `option redispatch 1` and `timeout connect` are what makes
/// a dead node cost no request that had not reached it yet; `send-proxy-v2`
/// tells lunchd the client's address.
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
    # PROXY v2 before every connection; the checks send it too (LOCAL).
    default-server send-proxy-v2 check check-ssl check-send-proxy verify none check-sni {domain} inter 500ms fall 2 rise 2
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
    server {acme_name} {acme_addr}:80 send-proxy-v2

backend lunchd_http
    mode http
    balance roundrobin
    default-server send-proxy-v2 check check-send-proxy inter 500ms fall 2 rise 2
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
    /// Times the health check took it from UP to DOWN (`chkdown`).
    downs: u64,
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
            downs: num(22),
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
    hosts.push(("client2".to_owned(), CLIENT2));
    let _network = Network::create(&hosts)?;
    println!(
        "e2e: network: bridge {LB}/24 in netns {}, nodes {}, clients {CLIENT} and {CLIENT2}",
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
        c.sh(&node_config())?;
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
            let mut conn = TlsConnection::open(&tls, connect_as_balancer(node.addr, 443)?)?;
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
                    let downs = server_downs(&node.name)?;
                    c.run(&["systemctl", "restart", SERVICE])?;
                    let new = wait_active(c, old)?;
                    // As an operator would: the next node only once this
                    // one is back in the rotation.
                    let back = wait_up(&node.name)?;
                    // Its /healthz failed while it stopped ([proxy]
                    // drain_delay), so HAProxy took it out. Reported, not
                    // required: a restart loses nothing either way (the
                    // sockets stay with systemd), and on a machine too busy
                    // for HAProxy's checks to keep time the delay can pass
                    // first. The maintenance stop below requires it.
                    let out = server_downs(&node.name)? - downs;
                    pids.push(format!(
                        "{} {old}->{new} (out of HAProxy's rotation {out}x, back UP {back:.1} s after restart returned)",
                        node.name
                    ));
                }
                Ok(pids)
            })?;
            none_failed(&load)?;
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
            none_failed(&load)?;
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
        "the per-client limit counts the client behind HAProxy, not HAProxy",
        &mut || {
            // One client holds connections through HAProxy until every node
            // has given it its PER_CLIENT; the rest are closed before TLS.
            let attempts = 3 * PER_CLIENT + 9;
            let mut held = Vec::new();
            let mut refused = 0;
            for _ in 0..attempts {
                let opened = connect_from_client(LB, 443).and_then(|tcp| {
                    let mut conn = TlsConnection::open(&tls, tcp)?;
                    let response = conn.get(LOAD_PATH)?;
                    ensure!(response.status == 200, "status {}", response.status);
                    Ok(conn)
                });
                match opened {
                    Ok(conn) => held.push(conn),
                    Err(_) => refused += 1,
                }
            }
            ensure!(
                held.len() == NODES as usize * PER_CLIENT,
                "{CLIENT} holds {} connections through HAProxy, {refused} refused; each of the {NODES} nodes \
                 should have given it {PER_CLIENT}",
                held.len()
            );
            // Meanwhile another client through the same HAProxy is served by
            // every node: HAProxy's own address is not the client limited.
            for _ in 0..2 * NODES {
                let mut conn = TlsConnection::open(&tls, connect_from_client2(LB, 443)?)
                    .with_context(|| format!("{CLIENT2} while {CLIENT} is at its limit"))?;
                let response = conn.get(LOAD_PATH)?;
                ensure!(response.status == 200, "{CLIENT2}: status {}", response.status);
            }
            // Each node's log names the client it refused.
            let mut named = Vec::new();
            for node in &nodes {
                let line = logged(node.c()?, "the per-client connection limit")
                    .with_context(|| format!("{} logged no per-client refusal", node.name))?;
                ensure!(line.contains(&format!("latest={CLIENT} ")), "{}: {line}", node.name);
                named.push(node.name.as_str());
            }
            let count = held.len();
            drop(held);
            Ok(format!(
                "{attempts} connections from {CLIENT} through HAProxy: {count} served ({PER_CLIENT} per node), \
                 {refused} closed before TLS; {CLIENT2} served by every node meanwhile; the refusals logged with \
                 latest={CLIENT} on {}",
                named.join(", ")
            ))
        },
    );

    step(
        "the access log names the client behind HAProxy, not HAProxy",
        &mut || {
            const PROBE: &str = "/e2e-access-log-probe";
            let sent = 2 * NODES as usize;
            for _ in 0..sent {
                let mut conn = TlsConnection::open(&tls, connect_from_client2(LB, 443)?)?;
                ensure!(conn.get(PROBE)?.status == 404, "{PROBE} is not a 404");
            }
            let probes = |node: &Node| -> anyhow::Result<Vec<String>> {
                let log = node.c()?.run(&["cat", "/var/log/lunchd/access.log"])?;
                Ok(log.lines().filter(|l| l.contains(PROBE)).map(str::to_owned).collect())
            };
            let lines = steps::wait_for("the probes in the access logs", Duration::from_secs(10), || {
                let mut all = Vec::new();
                for node in &nodes {
                    all.extend(probes(node)?.into_iter().map(|l| (node.name.clone(), l)));
                }
                Ok((all.len() >= sent).then_some(all))
            })?;
            ensure!(
                lines.len() == sent,
                "{} lines for {sent} requests: {lines:#?}",
                lines.len()
            );
            let mut per_node: Vec<String> = Vec::new();
            for node in &nodes {
                let n = lines.iter().filter(|(name, _)| *name == node.name).count();
                per_node.push(format!("{} {n}", node.name));
            }
            for (name, line) in &lines {
                let client = line.split(' ').nth(1).unwrap_or_default();
                ensure!(
                    client.starts_with(&format!("{CLIENT2}:")),
                    "{name}'s access log names {client}, not {CLIENT2}: {line}"
                );
            }
            Ok(format!(
                "{sent} requests from {CLIENT2} through HAProxy, {} lines ({}), each naming {CLIENT2}",
                lines.len(),
                per_node.join(", ")
            ))
        },
    );

    step(
        "a connection that bypasses HAProxy is closed before TLS, with or without a PROXY header",
        &mut || {
            let node = &nodes[0];
            let direct = TlsConnection::open(&tls, connect_from_client(node.addr, 443)?);
            ensure!(direct.is_err(), "{CLIENT} reached {} directly", node.name);
            let mut forged = connect_from_client(node.addr, 443)?;
            forged.write_all(&lunch_testkit::proxy_v2(
                SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 40000),
                SocketAddrV4::new(node.addr, 443),
            ))?;
            let forged = TlsConnection::open(&tls, forged);
            ensure!(
                forged.is_err(),
                "{CLIENT} reached {} with a forged PROXY header",
                node.name
            );
            let line = logged(node.c()?, "did not come from a trusted balancer").context("no refusal logged")?;
            ensure!(line.contains(&CLIENT.to_string()), "{line}");
            Ok(format!(
                "{CLIENT} to {}:443 directly: closed, twice; logged: {}",
                node.addr,
                line.split("latest=").nth(1).unwrap_or(&line)
            ))
        },
    );

    step(
        "n2 stopped for maintenance under load: its /healthz fails first, HAProxy takes it out, zero failed",
        &mut || {
            let c = nodes[1].c()?;
            let downs = server_downs("n2")?;
            let (load, back) = under_load(&tls, || {
                let mut argv = vec!["systemctl", "stop", SERVICE];
                argv.extend(SOCKETS);
                c.run(&argv)?;
                ensure!(
                    server_downs("n2")? > downs,
                    "the sockets closed before HAProxy took n2 out"
                );
                let mut argv = vec!["systemctl", "start"];
                argv.extend(SOCKETS);
                c.run(&argv)?;
                let started = Instant::now();
                wait_up("n2")?;
                Ok(started.elapsed().as_secs_f64())
            })?;
            none_failed(&load)?;
            Ok(format!(
                "{} requests sent, {} answered, 0 failed; n2 DOWN in HAProxy before its sockets closed, UP again \
                 {back:.1} s after they were started",
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

/// A connection to `addr` from the host `host` (a network namespace of
/// the run), with the client's timeouts.
fn connect_in(host: &str, addr: Ipv4Addr, port: u16) -> anyhow::Result<TcpStream> {
    let tcp = container::in_netns(&netns_path(host), || {
        TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(addr, port)), Duration::from_secs(5))
    })??;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(tcp)
}

fn connect_from_client(addr: Ipv4Addr, port: u16) -> anyhow::Result<TcpStream> {
    connect_in("client", addr, port)
}

fn connect_from_client2(addr: Ipv4Addr, port: u16) -> anyhow::Result<TcpStream> {
    connect_in("client2", addr, port)
}

/// A connection to one node as HAProxy's health checks make it: from the
/// balancer's address, with a LOCAL PROXY header. The nodes accept
/// nothing else.
fn connect_as_balancer(addr: Ipv4Addr, port: u16) -> anyhow::Result<TcpStream> {
    let mut tcp = connect_in("lan", addr, port)?;
    tcp.write_all(&lunch_testkit::proxy_v2_local())?;
    Ok(tcp)
}

/// The certificate `addr` presents, DER.
fn served(tls: &Tls, addr: Ipv4Addr) -> anyhow::Result<Vec<u8>> {
    TlsConnection::open(tls, connect_as_balancer(addr, 443)?)?
        .peer_certificate()
        .context("no peer certificate")
}

/// The last line of lunchd's journal on `c` that contains `needle`,
/// waiting up to 10 s for journald to have it.
fn logged(c: &Container, needle: &str) -> anyhow::Result<String> {
    steps::wait_for(&format!("lunchd to log {needle:?}"), Duration::from_secs(10), || {
        let journal = c.run(&["journalctl", "-u", SERVICE, "-o", "cat", "--no-pager"])?;
        Ok(journal.lines().rfind(|l| l.contains(needle)).map(str::to_owned))
    })
}

/// Fails unless every request of `load` was answered (and some were).
fn none_failed(load: &Load) -> anyhow::Result<()> {
    ensure!(load.answered > 0, "no request answered");
    ensure!(
        load.refused == 0 && load.failed.is_empty(),
        "{} sent, {} refused, {} failed: {:?}",
        load.attempts,
        load.refused,
        load.failed.len(),
        load.failed
    );
    Ok(())
}

/// How often HAProxy's health check has taken the https server `name`
/// from UP to DOWN.
fn server_downs(name: &str) -> anyhow::Result<u64> {
    https_servers()?
        .iter()
        .find(|s| s.server == name)
        .map(|s| s.downs)
        .with_context(|| format!("HAProxy has no https server {name}"))
}

/// Waits until HAProxy sees the https server `name` UP; the seconds it took.
fn wait_up(name: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    steps::wait_for(&format!("HAProxy to see {name} UP"), Duration::from_secs(20), || {
        Ok(https_servers()?
            .iter()
            .any(|s| s.server == name && s.status == "UP")
            .then_some(()))
    })?;
    Ok(started.elapsed().as_secs_f64())
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
                LOAD_PATH,
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
        // Every server line gets PROXY v2, and the TLS checks send it too.
        for backend in ["lunchd_https", "lunchd_http", "acme"] {
            let body = config.split(&format!("\nbackend {backend}\n")).nth(1).unwrap();
            let body = body.split("\n\n").next().unwrap();
            assert!(body.contains("send-proxy-v2"), "{backend}: {body}");
        }
        assert!(config.contains("check-ssl check-send-proxy"));
    }

    /// docs/scale-out.md shows the configuration the run tests, as it is.
    #[test]
    fn the_docs_show_the_tested_haproxy_configuration() {
        let nodes: Vec<(String, Ipv4Addr)> = (1..=3).map(|i| (format!("n{i}"), node_addr(i))).collect();
        let config = haproxy_config("lunchd.test", &nodes);
        let docs = std::fs::read_to_string(crate::project_root().join("docs/scale-out.md")).unwrap();
        let block = format!("```haproxy\n{config}```\n");
        assert!(
            docs.contains(&block),
            "docs/scale-out.md does not show haproxy_config(\"lunchd.test\", n1..n3); put this there:\n{block}"
        );
    }
}
