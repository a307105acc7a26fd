//! `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` as systemd passes them,
//! and the mapping of names to descriptors.
//!
//! Input: up to three lines `LISTEN_PID=...`, `LISTEN_FDS=...`,
//! `LISTEN_FDNAMES=...` in any order; a missing line is an unset variable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunch_net::sockets::{ListenEnv, Role, map_names, parse_listen_env};

const OUR_PID: u32 = 4242;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut env = ListenEnv::default();
    for line in text.split('\n') {
        if let Some(v) = line.strip_prefix("LISTEN_PID=") {
            env.pid = Some(v);
        } else if let Some(v) = line.strip_prefix("LISTEN_FDS=") {
            env.fds = Some(v);
        } else if let Some(v) = line.strip_prefix("LISTEN_FDNAMES=") {
            env.names = Some(v);
        }
    }
    match parse_listen_env(env, OUR_PID) {
        Ok(None) => {}
        Ok(Some(names)) => {
            let count: usize = env.fds.unwrap().parse().expect("a count was accepted");
            assert!((1..=1024).contains(&count));
            assert_eq!(names.len(), count);
            assert_eq!(names.join(":"), env.names.unwrap());
            if let Some(pid) = env.pid.filter(|p| !p.is_empty()) {
                assert_eq!(
                    pid.parse::<u32>().ok(),
                    Some(OUR_PID),
                    "a foreign LISTEN_PID was accepted"
                );
            }
            for required in [&[Role::Https, Role::Http][..], &[Role::Https][..]] {
                match map_names(&names, required) {
                    Ok(map) => {
                        for role in Role::ALL {
                            if let Some(index) = map.get(role) {
                                assert_eq!(names[index], role.name());
                            }
                        }
                        assert!(required.iter().all(|role| map.get(*role).is_some()));
                        assert!(names.iter().all(|n| Role::from_name(n).is_some()));
                        assert_eq!(map.iter().count(), names.len());
                    }
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
