//! The listening sockets: inherited from systemd by name, or bound here
//! when the process was started by hand.
//!
//! systemd's socket activation protocol (`sd_listen_fds(3)`) passes
//! descriptors from fd 3 ([`SD_LISTEN_FDS_START`]) on, with `LISTEN_PID`
//! naming the process they are meant for, `LISTEN_FDS` their count and
//! `LISTEN_FDNAMES` a `:`-separated name for each. When the sockets come
//! from two socket units their order varies between starts, so they are
//! only ever looked up by name, and each name has a [`Role`].
//!
//! This module is the only place in lunchd that turns a descriptor number
//! into a socket.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// The first descriptor systemd passes, as `sd-daemon.h` defines it.
pub const SD_LISTEN_FDS_START: RawFd = 3;

/// The name of the socket that gets the plain-HTTP redirect server.
pub const HTTP: &str = Role::Http.name();
/// The name of the socket that gets the TLS server.
pub const HTTPS: &str = Role::Https.name();
/// The name of the optional socket that gets the metrics server.
pub const METRICS: &str = Role::Metrics.name();
/// The name of the UDP socket that gets the HTTP/3 server.
pub const QUIC: &str = Role::Quic.name();

/// What a named socket is for. Its name is what `FileDescriptorName=`
/// gives the socket in its unit.
///
/// A new kind of socket is a new variant here, its name
/// in [`Role::name`], its [`SocketKind`] in [`Role::kind`] and an entry in
/// [`Role::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `http`: the plain-HTTP redirect server.
    Http,
    /// `https`: the TLS server.
    Https,
    /// `metrics`: the optional Prometheus metrics server.
    Metrics,
    /// `quic`: the HTTP/3 server, on a UDP socket.
    Quic,
}

/// What kind of socket a role takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// A listening TCP socket (`ListenStream=`).
    Stream,
    /// A UDP socket (`ListenDatagram=`).
    Datagram,
}

impl Role {
    /// Every role, in the order names are listed in messages.
    pub const ALL: [Role; 4] = [Role::Http, Role::Https, Role::Metrics, Role::Quic];

    /// The socket name of the role.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Http => "http",
            Role::Https => "https",
            Role::Metrics => "metrics",
            Role::Quic => "quic",
        }
    }

    /// The kind of socket the role takes.
    pub const fn kind(self) -> SocketKind {
        match self {
            Role::Http | Role::Https | Role::Metrics => SocketKind::Stream,
            Role::Quic => SocketKind::Datagram,
        }
    }

    /// The role of a socket name, if it has one.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The socket activation variables as found in the environment, unparsed.
/// The caller reads the environment; this crate only interprets it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenEnv<'a> {
    /// `LISTEN_PID`.
    pub pid: Option<&'a str>,
    /// `LISTEN_FDS`.
    pub fds: Option<&'a str>,
    /// `LISTEN_FDNAMES`.
    pub names: Option<&'a str>,
}

/// A wrong socket setup, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// `LISTEN_PID` names another process.
    #[error(
        "LISTEN_PID is {listen_pid} but this process is {ours}: the sockets were passed to another process; \
         start lunchd directly from the service's ExecStart= (not through a shell or wrapper that forks)"
    )]
    ForeignPid {
        /// The value of `LISTEN_PID`.
        listen_pid: String,
        /// This process.
        ours: u32,
    },
    /// `LISTEN_FDS` is not a count.
    #[error("LISTEN_FDS is `{0}`, which is not a number of descriptors")]
    BadCount(String),
    /// `LISTEN_FDNAMES` does not have one name per descriptor.
    #[error("LISTEN_FDNAMES has {names} names for {fds} descriptors; it must have one name per socket")]
    NameCount {
        /// Names given.
        names: usize,
        /// Descriptors given.
        fds: usize,
    },
    /// Sockets were passed without names.
    #[error(
        "{fds} sockets were passed without names; name them with FileDescriptorName=http and \
         FileDescriptorName=https in the socket units (or --fdname= for systemd-socket-activate)"
    )]
    Unnamed {
        /// Descriptors given.
        fds: usize,
    },
    /// A name no role has.
    #[error(
        "socket {index} is named `{name}`; lunchd knows only {known}; \
         fix FileDescriptorName= in the socket unit",
        known = known_names()
    )]
    UnknownName {
        /// Position (0 is fd 3).
        index: usize,
        /// The name.
        name: String,
    },
    /// Two sockets with the same name.
    #[error(
        "two sockets are named `{name}`; give each socket unit its own FileDescriptorName= \
         (systemd names every socket of one unit after its last FileDescriptorName=, so use one unit per name)"
    )]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A needed socket is missing.
    #[error(
        "no socket named `{role}` was passed; add a socket unit with FileDescriptorName={role} \
         to the service's Sockets="
    )]
    Missing {
        /// The role no socket was passed for.
        role: Role,
    },
    /// The inherited sockets were taken already: each descriptor has one
    /// owner.
    #[error("the inherited sockets were taken already; take them once, at start")]
    AlreadyAdopted,
    /// The descriptor is not a TCP stream socket.
    #[error("socket `{name}` (fd {fd}) is not a TCP stream socket: {source}; use ListenStream= with a port or address")]
    NotTcp {
        /// Its name.
        name: String,
        /// The descriptor number.
        fd: RawFd,
        /// What the check said.
        source: io::Error,
    },
    /// The descriptor is not a UDP socket.
    #[error("socket `{name}` (fd {fd}) is not a UDP socket: {source}; use ListenDatagram= with a port or address")]
    NotUdp {
        /// Its name.
        name: String,
        /// The descriptor number.
        fd: RawFd,
        /// What the check said.
        source: io::Error,
    },
    /// The descriptor is a TCP socket that is not listening.
    #[error("socket `{name}` (fd {fd}) is not listening; use ListenStream= and Accept=no in the socket unit")]
    NotListening {
        /// Its name.
        name: String,
        /// The descriptor number.
        fd: RawFd,
    },
    /// Binding a fallback address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// `` `http` and `https` ``: the names of [`Role::ALL`], for messages.
fn known_names() -> String {
    let names: Vec<String> = Role::ALL.iter().map(|role| format!("`{role}`")).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Which descriptor (its position, 0 for fd 3) carries each role's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoleMap([Option<usize>; Role::ALL.len()]);

impl RoleMap {
    /// The position of `role`'s socket, if one was passed.
    pub fn get(&self, role: Role) -> Option<usize> {
        self.0[role.index()]
    }

    /// Every role a socket was passed for, with its position.
    pub fn iter(&self) -> impl Iterator<Item = (Role, usize)> + '_ {
        Role::ALL.into_iter().filter_map(|role| Some((role, self.get(role)?)))
    }
}

/// The sockets systemd passed, by role.
#[derive(Debug, Default)]
pub struct Listeners([Option<Inherited>; Role::ALL.len()]);

#[derive(Debug)]
enum Inherited {
    Stream(TcpListener),
    Datagram(UdpSocket),
}

impl Listeners {
    /// Takes the listener of `role` (a [`SocketKind::Stream`] role) out;
    /// [`SocketError::Missing`] if there is none (or it was taken before).
    pub fn take(&mut self, role: Role) -> Result<TcpListener, SocketError> {
        match self.0[role.index()].take() {
            Some(Inherited::Stream(listener)) => Ok(listener),
            Some(other) => {
                self.0[role.index()] = Some(other);
                Err(SocketError::Missing { role })
            }
            None => Err(SocketError::Missing { role }),
        }
    }

    /// Takes the UDP socket of `role` (a [`SocketKind::Datagram`] role)
    /// out, if one was passed: such sockets are optional.
    pub fn take_datagram(&mut self, role: Role) -> Option<UdpSocket> {
        match self.0[role.index()].take() {
            Some(Inherited::Datagram(socket)) => Some(socket),
            other => {
                self.0[role.index()] = other;
                None
            }
        }
    }
}

/// Interprets the socket activation variables.
///
/// Returns `Ok(None)` when the process was not socket-activated (no
/// `LISTEN_FDS`), otherwise the name of each passed descriptor, in fd order.
pub fn parse_listen_env(env: ListenEnv<'_>, our_pid: u32) -> Result<Option<Vec<String>>, SocketError> {
    let Some(fds) = env.fds.filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    if let Some(pid) = env.pid.filter(|p| !p.is_empty()) {
        if pid.parse::<u32>().ok() != Some(our_pid) {
            return Err(SocketError::ForeignPid {
                listen_pid: pid.to_owned(),
                ours: our_pid,
            });
        }
    }
    let count: usize = match fds.parse() {
        Ok(n) if n <= 1024 => n,
        _ => return Err(SocketError::BadCount(fds.to_owned())),
    };
    if count == 0 {
        return Ok(None);
    }
    let Some(names) = env.names.filter(|n| !n.is_empty()) else {
        return Err(SocketError::Unnamed { fds: count });
    };
    let names: Vec<String> = names.split(':').map(str::to_owned).collect();
    if names.len() != count {
        return Err(SocketError::NameCount {
            names: names.len(),
            fds: count,
        });
    }
    if names.iter().all(|n| n == "unknown") {
        return Err(SocketError::Unnamed { fds: count });
    }
    Ok(Some(names))
}

/// Which descriptor carries each role, checking that every name has a role,
/// no name is used twice and every role in `required` is there (in the
/// order given: the first one missing is reported).
///
/// Pure, so the rules are testable without descriptors.
pub fn map_names(names: &[String], required: &[Role]) -> Result<RoleMap, SocketError> {
    let mut map = RoleMap::default();
    for (index, name) in names.iter().enumerate() {
        let Some(role) = Role::from_name(name) else {
            return Err(SocketError::UnknownName {
                index,
                name: name.clone(),
            });
        };
        if map.0[role.index()].replace(index).is_some() {
            return Err(SocketError::DuplicateName { name: name.clone() });
        }
    }
    if let Some(&role) = required.iter().find(|role| map.get(**role).is_none()) {
        return Err(SocketError::Missing { role });
    }
    Ok(map)
}

/// Whether the inherited descriptors have been taken.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the inherited sockets, named by `names` (from
/// [`parse_listen_env`]); call once, at start.
///
/// Each socket is checked to be of its role's [`SocketKind`] (a listening
/// TCP socket, or a UDP socket), marked close-on-exec and switched to
/// non-blocking mode, as tokio needs. Every named socket is
/// taken, also those of roles not in `required`: dropping them is the
/// caller's choice.
pub fn adopt(names: &[String], required: &[Role]) -> Result<Listeners, SocketError> {
    let map = map_names(names, required)?;
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(SocketError::AlreadyAdopted);
    }
    let mut listeners = Listeners::default();
    for (role, index) in map.iter() {
        let name = role.name().to_owned();
        // At most 1024 descriptors, so no overflow.
        let fd = SD_LISTEN_FDS_START + index as RawFd;
        // SAFETY: the service manager passed descriptors SD_LISTEN_FDS_START
        // .. SD_LISTEN_FDS_START + LISTEN_FDS to this process
        // (`parse_listen_env` checked LISTEN_PID), and nothing in the process
        // owns them but this function: `ADOPTED` lets it run once, and
        // `map_names` gives each position one role. The borrow only asks
        // the kernel about the descriptor; a descriptor that is not open or
        // not a socket of the role's kind fails the check (EBADF,
        // ENOTSOCK...) before ownership is taken, so no other kind of file
        // is ever closed as a socket.
        #[allow(unsafe_code)]
        let socket = unsafe {
            check_kind(BorrowedFd::borrow_raw(fd), role.kind(), &name, fd)?;
            Socket::from_raw_fd(fd)
        };
        let prepare = || -> io::Result<()> {
            socket.set_cloexec(true)?;
            socket.set_nonblocking(true)
        };
        let listener = match role.kind() {
            SocketKind::Stream => {
                prepare().map_err(|source| SocketError::NotTcp {
                    name: name.clone(),
                    fd,
                    source,
                })?;
                Inherited::Stream(socket.into())
            }
            SocketKind::Datagram => {
                prepare().map_err(|source| SocketError::NotUdp {
                    name: name.clone(),
                    fd,
                    source,
                })?;
                Inherited::Datagram(socket.into())
            }
        };
        listeners.0[role.index()] = Some(listener);
    }
    Ok(listeners)
}

/// Whether `socket` is of `kind`: a listening TCP socket or a UDP socket,
/// over IPv4 or IPv6.
fn check_kind(socket: BorrowedFd<'_>, kind: SocketKind, name: &str, fd: RawFd) -> Result<(), SocketError> {
    let socket = SockRef::from(&socket);
    let wrong = |source| match kind {
        SocketKind::Stream => SocketError::NotTcp {
            name: name.to_owned(),
            fd,
            source,
        },
        SocketKind::Datagram => SocketError::NotUdp {
            name: name.to_owned(),
            fd,
            source,
        },
    };
    let wanted = match kind {
        SocketKind::Stream => Type::STREAM,
        SocketKind::Datagram => Type::DGRAM,
    };
    let found = socket.r#type().map_err(wrong)?;
    let domain = socket.domain().map_err(wrong)?;
    if found != wanted || !(domain == Domain::IPV4 || domain == Domain::IPV6) {
        return Err(wrong(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {} socket", describe(domain, found)),
        )));
    }
    match kind {
        SocketKind::Datagram => Ok(()),
        SocketKind::Stream => match socket.is_listener() {
            Ok(true) => Ok(()),
            Ok(false) => Err(SocketError::NotListening {
                name: name.to_owned(),
                fd,
            }),
            Err(source) => Err(wrong(source)),
        },
    }
}

fn describe(domain: Domain, kind: Type) -> String {
    let domain = match domain {
        Domain::IPV4 => "an IPv4".to_owned(),
        Domain::IPV6 => "an IPv6".to_owned(),
        Domain::UNIX => "a Unix".to_owned(),
        other => format!("a {other:?}"),
    };
    let kind = match kind {
        Type::STREAM => "stream".to_owned(),
        Type::DGRAM => "datagram".to_owned(),
        Type::SEQPACKET => "seqpacket".to_owned(),
        other => format!("{other:?}"),
    };
    format!("{domain} {kind}")
}

/// Binds `addr` the way a socket unit would: `SO_REUSEADDR`, IPv6 sockets
/// dual-stack, a 1024-connection backlog, non-blocking.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, SocketError> {
    let bind = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    bind().map_err(|source| SocketError::Bind { addr, source })
}

/// Binds the UDP socket `addr` the way a socket unit would: IPv6 sockets
/// dual-stack, non-blocking.
pub fn bind_datagram(addr: SocketAddr) -> Result<UdpSocket, SocketError> {
    let bind = || -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    bind().map_err(|source| SocketError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pid: Option<&'a str>, fds: Option<&'a str>, names: Option<&'a str>) -> ListenEnv<'a> {
        ListenEnv { pid, fds, names }
    }

    fn check(e: ListenEnv<'_>, expected: Result<Option<&[&str]>, &str>) {
        let got = parse_listen_env(e, 42).map_err(|e| e.to_string());
        let expected = expected
            .map(|names| names.map(|n| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()))
            .map_err(str::to_owned);
        assert_eq!(got, expected);
    }

    #[test]
    fn listen_env() {
        check(env(None, None, None), Ok(None));
        check(env(Some("42"), Some("0"), None), Ok(None));
        check(
            env(Some("42"), Some("2"), Some("http:https")),
            Ok(Some(&["http", "https"])),
        );
        check(
            env(Some("42"), Some("2"), Some("https:http")),
            Ok(Some(&["https", "http"])),
        );
        // No LISTEN_PID: accepted, as sd_listen_fds does for wrappers that cannot know it.
        check(env(None, Some("1"), Some("https")), Ok(Some(&["https"])));
        check(
            env(Some("41"), Some("2"), Some("http:https")),
            Err(
                "LISTEN_PID is 41 but this process is 42: the sockets were passed to another process; \
                 start lunchd directly from the service's ExecStart= (not through a shell or wrapper that forks)",
            ),
        );
        check(
            env(Some("42"), Some("two"), None),
            Err("LISTEN_FDS is `two`, which is not a number of descriptors"),
        );
        check(
            env(Some("42"), Some("-1"), None),
            Err("LISTEN_FDS is `-1`, which is not a number of descriptors"),
        );
        check(
            env(Some("42"), Some("2"), Some("http")),
            Err("LISTEN_FDNAMES has 1 names for 2 descriptors; it must have one name per socket"),
        );
        check(
            env(Some("42"), Some("2"), None),
            Err(
                "2 sockets were passed without names; name them with FileDescriptorName=http and \
                 FileDescriptorName=https in the socket units (or --fdname= for systemd-socket-activate)",
            ),
        );
        check(
            env(Some("42"), Some("2"), Some("unknown:unknown")),
            Err(
                "2 sockets were passed without names; name them with FileDescriptorName=http and \
                 FileDescriptorName=https in the socket units (or --fdname= for systemd-socket-activate)",
            ),
        );
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn names_map_by_name_not_position() {
        use Role::{Http, Https};
        let map = |n: &[&str], required: &[Role]| {
            let map = map_names(&names(n), required).unwrap();
            (map.get(Http), map.get(Https))
        };
        assert_eq!(map(&["http", "https"], &[Https, Http]), (Some(0), Some(1)));
        assert_eq!(map(&["https", "http"], &[Https, Http]), (Some(1), Some(0)));
        assert_eq!(map(&["https"], &[Https]), (None, Some(0)));
        assert_eq!(map(&["http", "https"], &[Https]), (Some(0), Some(1)));
    }

    #[test]
    fn roles_and_names_agree() {
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.name()), Some(role));
            assert_eq!(Role::ALL[role.index()], role);
        }
        assert_eq!(Role::from_name("web"), None);
        assert_eq!((HTTP, HTTPS, QUIC), ("http", "https", "quic"));
        assert_eq!(Role::Quic.kind(), SocketKind::Datagram);
        assert_eq!(Role::Https.kind(), SocketKind::Stream);
    }

    #[test]
    fn wrong_names_say_what_to_fix() {
        use Role::{Http, Https};
        let err = |n: &[&str], required: &[Role]| map_names(&names(n), required).unwrap_err().to_string();
        assert_eq!(
            err(&["https"], &[Https, Http]),
            "no socket named `http` was passed; add a socket unit with FileDescriptorName=http to the service's \
             Sockets="
        );
        assert_eq!(
            err(&["http"], &[Https, Http]),
            "no socket named `https` was passed; add a socket unit with FileDescriptorName=https to the service's Sockets="
        );
        assert!(err(&["https", "https"], &[Https, Http]).starts_with("two sockets are named `https`"));
        assert_eq!(
            err(&["http", "web"], &[Https, Http]),
            "socket 1 is named `web`; lunchd knows only `http`, `https`, `metrics` and `quic`; fix FileDescriptorName= in \
             the socket unit"
        );
    }

    fn check_fd(fd: &impl std::os::fd::AsFd) -> Result<(), String> {
        check_kind(fd.as_fd(), SocketKind::Stream, "https", 3).map_err(|e| e.to_string())
    }

    #[test]
    fn only_listening_tcp_sockets_pass_the_check() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(check_fd(&listener), Ok(()));
        let v6 = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        v6.bind(&"[::1]:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        v6.listen(1).unwrap();
        assert_eq!(check_fd(&v6), Ok(()));

        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(
            check_fd(&client),
            Err("socket `https` (fd 3) is not listening; use ListenStream= and Accept=no in the socket unit".into())
        );
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            check_fd(&udp),
            Err(
                "socket `https` (fd 3) is not a TCP stream socket: it is an IPv4 datagram socket; \
                 use ListenStream= with a port or address"
                    .into()
            )
        );
        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(check_fd(&unix).unwrap_err().contains("it is a Unix stream socket"));
        let udp_check = |fd: &dyn std::os::fd::AsFd| {
            check_kind(fd.as_fd(), SocketKind::Datagram, "quic", 5).map_err(|e| e.to_string())
        };
        assert_eq!(udp_check(&udp), Ok(()));
        assert_eq!(
            udp_check(&listener),
            Err(
                "socket `quic` (fd 5) is not a UDP socket: it is an IPv4 stream socket; \
                 use ListenDatagram= with a port or address"
                    .into()
            )
        );
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(
            check_fd(&file)
                .unwrap_err()
                .starts_with("socket `https` (fd 3) is not a TCP stream socket: ")
        );
    }
}
