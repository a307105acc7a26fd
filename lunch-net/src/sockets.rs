//! The listening sockets: inherited from systemd by name, or bound here
//! when the process was started by hand.
//!
//! systemd's socket activation protocol (`sd_listen_fds(3)`) passes
//! descriptors from fd 3 on, with `LISTEN_PID` naming the process they are
//! meant for, `LISTEN_FDS` their count and `LISTEN_FDNAMES` a `:`-separated
//! name for each. When the sockets come from two socket units their order
//! varies between starts, so they are only ever looked up by name.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// The name of the socket that gets the plain-HTTP redirect server.
pub const HTTP: &str = "http";
/// The name of the socket that gets the TLS server.
pub const HTTPS: &str = "https";

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

/// Which sockets the service needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Both `http` and `https`.
    Both,
    /// Only `https`: the service is configured without a redirect server.
    HttpsOnly,
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
    /// A name this service does not use.
    #[error(
        "socket {index} is named `{name}`; lunchd knows only `http` and `https`; \
         fix FileDescriptorName= in the socket unit"
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
        "no socket named `{name}` was passed; add a socket unit with FileDescriptorName={name} \
         to the service's Sockets={hint}"
    )]
    Missing {
        /// The missing name.
        name: &'static str,
        /// Extra advice.
        hint: &'static str,
    },
    /// The descriptor is not a TCP stream socket.
    #[error("socket `{name}` (fd {fd}) is not a TCP stream socket: {source}; use ListenStream= with a port or address")]
    NotTcp {
        /// Its name.
        name: String,
        /// The descriptor number.
        fd: usize,
        /// What the check said.
        source: io::Error,
    },
    /// The descriptor is a TCP socket that is not listening.
    #[error("socket `{name}` (fd {fd}) is not listening; use ListenStream= and Accept=no in the socket unit")]
    NotListening {
        /// Its name.
        name: String,
        /// The descriptor number.
        fd: usize,
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

/// The listeners the servers run on.
#[derive(Debug)]
pub struct Listeners {
    /// For the redirect server; absent when configured HTTPS-only.
    pub http: Option<TcpListener>,
    /// For the TLS server.
    pub https: TcpListener,
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

/// Which descriptor index carries each name: `(http, https)`.
///
/// Pure, so the rules are testable without descriptors.
pub fn map_names(names: &[String], expect: Expect) -> Result<(Option<usize>, usize), SocketError> {
    let mut http = None;
    let mut https = None;
    for (index, name) in names.iter().enumerate() {
        let slot = match name.as_str() {
            HTTP => &mut http,
            HTTPS => &mut https,
            _ => {
                return Err(SocketError::UnknownName {
                    index,
                    name: name.clone(),
                });
            }
        };
        if slot.replace(index).is_some() {
            return Err(SocketError::DuplicateName { name: name.clone() });
        }
    }
    let https = https.ok_or(SocketError::Missing { name: HTTPS, hint: "" })?;
    if expect == Expect::Both && http.is_none() {
        return Err(SocketError::Missing {
            name: HTTP,
            hint: ", or set `redirect = false` under [http] to run HTTPS only",
        });
    }
    Ok((http, https))
}

/// Takes the named inherited sockets out of `fds`.
///
/// `names` comes from [`parse_listen_env`]. Each socket is checked to be a
/// listening TCP socket and switched to non-blocking mode, as tokio needs.
/// A socket named `http` is used even when `expect` is
/// [`Expect::HttpsOnly`]: it is the caller's choice to drop it.
pub fn adopt(fds: &mut listenfd::ListenFd, names: &[String], expect: Expect) -> Result<Listeners, SocketError> {
    let (http, https) = map_names(names, expect)?;
    let take = |fds: &mut listenfd::ListenFd, index: usize| -> Result<TcpListener, SocketError> {
        let name = names[index].clone();
        let fd = index + 3;
        let listener = match fds.take_tcp_listener(index) {
            Ok(Some(listener)) => listener,
            Ok(None) => {
                return Err(SocketError::NotTcp {
                    name,
                    fd,
                    source: io::Error::other("the descriptor was already taken"),
                });
            }
            Err(source) => return Err(SocketError::NotTcp { name, fd, source }),
        };
        match SockRef::from(&listener).is_listener() {
            Ok(true) => {}
            Ok(false) => return Err(SocketError::NotListening { name, fd }),
            Err(source) => return Err(SocketError::NotTcp { name, fd, source }),
        }
        listener
            .set_nonblocking(true)
            .map_err(|source| SocketError::NotTcp { name, fd, source })?;
        Ok(listener)
    };
    let http = http.map(|index| take(fds, index)).transpose()?;
    let https = take(fds, https)?;
    Ok(Listeners { http, https })
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
        assert_eq!(
            map_names(&names(&["http", "https"]), Expect::Both).unwrap(),
            (Some(0), 1)
        );
        assert_eq!(
            map_names(&names(&["https", "http"]), Expect::Both).unwrap(),
            (Some(1), 0)
        );
        assert_eq!(map_names(&names(&["https"]), Expect::HttpsOnly).unwrap(), (None, 0));
        assert_eq!(
            map_names(&names(&["http", "https"]), Expect::HttpsOnly).unwrap(),
            (Some(0), 1)
        );
    }

    #[test]
    fn wrong_names_say_what_to_fix() {
        let err = |n: &[&str], e| map_names(&names(n), e).unwrap_err().to_string();
        assert_eq!(
            err(&["https"], Expect::Both),
            "no socket named `http` was passed; add a socket unit with FileDescriptorName=http to the service's \
             Sockets=, or set `redirect = false` under [http] to run HTTPS only"
        );
        assert_eq!(
            err(&["http"], Expect::Both),
            "no socket named `https` was passed; add a socket unit with FileDescriptorName=https to the service's Sockets="
        );
        assert!(err(&["https", "https"], Expect::Both).starts_with("two sockets are named `https`"));
        assert!(err(&["http", "web"], Expect::Both).starts_with("socket 1 is named `web`"));
    }
}
