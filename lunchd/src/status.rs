//! The one line `systemctl status lunchd` shows (`STATUS=`): what needs
//! attention first, then what lunchd serves, how long its certificate has
//! left and how the last reload went.

use std::sync::Mutex;

use lunch_net::tls::CertificateInfo;

use crate::certwatch::{Check, Urgency, format_utc};

/// How the last reload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// None since the start, at this time (seconds since the epoch).
    None { started: i64 },
    /// The last one succeeded at this time.
    Ok { at: i64 },
    /// The last one failed at this time, for this reason. Unless
    /// `applied`, the previous configuration and certificate are still
    /// served; with it the new ones are, and what failed was beside them
    /// (the access log could not be reopened).
    Failed { at: i64, problem: String, applied: bool },
}

/// What the reloads since the start came to, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloads {
    /// Reloads that succeeded.
    pub ok: u64,
    /// Reloads that failed.
    pub failed: u64,
    /// Whether the last one succeeded (true before the first).
    pub last_ok: bool,
    /// When the last one ended (the start, before the first one).
    pub last_at: i64,
}

/// What the STATUS= line is made of, kept between notifications.
#[derive(Debug)]
pub struct Status {
    started: i64,
    serving: Mutex<String>,
    reload: Mutex<(Reload, Reloads)>,
}

impl Status {
    /// `serving` says what is served, e.g. `https on 0.0.0.0:443, http
    /// redirect on 0.0.0.0:80`; `started` is the time of the start.
    pub fn new(serving: String, started: i64) -> Status {
        Status {
            started,
            serving: Mutex::new(serving),
            reload: Mutex::new((
                Reload::None { started },
                Reloads {
                    ok: 0,
                    failed: 0,
                    last_ok: true,
                    last_at: started,
                },
            )),
        }
    }

    /// Says what is served, once the servers run.
    pub fn serving(&self, serving: String) {
        *self.serving.lock().unwrap_or_else(|e| e.into_inner()) = serving;
    }

    /// When lunchd started, in seconds since the epoch.
    pub fn started(&self) -> i64 {
        self.started
    }

    /// Records the outcome of a reload.
    pub fn reloaded(&self, outcome: Reload) {
        let mut state = self.reload.lock().unwrap_or_else(|e| e.into_inner());
        let counts = &mut state.1;
        match &outcome {
            Reload::None { .. } => {}
            Reload::Ok { at } => {
                counts.ok += 1;
                counts.last_ok = true;
                counts.last_at = *at;
            }
            Reload::Failed { at, .. } => {
                counts.failed += 1;
                counts.last_ok = false;
                counts.last_at = *at;
            }
        }
        state.0 = outcome;
    }

    /// The reloads since the start.
    pub fn reloads(&self) -> Reloads {
        self.reload.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// The line for the certificate `info` in the state `check`.
    pub fn line(&self, info: &CertificateInfo, check: &Check) -> String {
        let reload = self.reload.lock().unwrap_or_else(|e| e.into_inner()).0.clone();
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner()).clone();
        line(&serving, &reload, info, check)
    }
}

fn line(serving: &str, reload: &Reload, info: &CertificateInfo, check: &Check) -> String {
    let mut parts = Vec::new();
    if let Reload::Failed { at, problem, applied } = reload {
        let served = if *applied {
            "the new configuration is served, but"
        } else {
            "still serving the previous configuration:"
        };
        parts.push(format!("reload failed at {}, {served} {problem}", format_utc(*at)));
    }
    let certificate = check.status(info);
    if check.urgency != Urgency::Fine {
        parts.push(certificate.clone());
    }
    parts.push(format!("{serving} for {}", names(&info.names)));
    if check.urgency == Urgency::Fine {
        parts.push(certificate);
    }
    match reload {
        Reload::None { started } => parts.push(format!("started {}", format_utc(*started))),
        Reload::Ok { at } => parts.push(format!("last reload ok at {}", format_utc(*at))),
        Reload::Failed { .. } => {}
    }
    parts.join("; ")
}

/// The certificate's names, the first few of them.
fn names(names: &[String]) -> String {
    const SHOWN: usize = 3;
    match names.len() {
        0 => "no names".to_owned(),
        n if n <= SHOWN => names.join(" "),
        n => format!("{} and {} more", names[..SHOWN].join(" "), n - SHOWN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;
    const START: i64 = 1_796_119_200; // 2026-12-01 10:00:00 UTC

    fn at(secs: i64) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.try_into().unwrap())
    }

    fn info(names: &[&str], lifetime_hours: i64) -> CertificateInfo {
        CertificateInfo {
            subject: format!("CN={}", names[0]),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            serial: "2a".to_owned(),
            not_before: at(START - HOUR),
            not_after: at(START - HOUR + lifetime_hours * HOUR),
            source: "/run/credentials/lunchd.service/fullchain.pem".to_owned(),
        }
    }

    fn check(reload: Reload, info: &CertificateInfo, now: i64, expected: &str) {
        let status = Status::new("https on 0.0.0.0:443, http redirect on 0.0.0.0:80".to_owned(), START);
        status.reloaded(reload);
        assert_eq!(status.line(info, &Check::of(info, now)), expected);
    }

    #[test]
    fn lines() {
        let ninety_days = info(&["lunch.example.com"], 2160);
        check(
            Reload::None { started: START },
            &ninety_days,
            START,
            "https on 0.0.0.0:443, http redirect on 0.0.0.0:80 for lunch.example.com; \
             certificate expires in 89 days (2027-03-01 09:00:00 UTC); started 2026-12-01 10:00:00 UTC",
        );
        check(
            Reload::Ok { at: START + HOUR },
            &ninety_days,
            START + HOUR,
            "https on 0.0.0.0:443, http redirect on 0.0.0.0:80 for lunch.example.com; \
             certificate expires in 89 days (2027-03-01 09:00:00 UTC); last reload ok at 2026-12-01 11:00:00 UTC",
        );
        check(
            Reload::Failed {
                at: START + HOUR,
                problem: "the certificate in /x expired on 2026-11-30; renew it".to_owned(),
                applied: false,
            },
            &ninety_days,
            START + HOUR,
            "reload failed at 2026-12-01 11:00:00 UTC, still serving the previous configuration: \
             the certificate in /x expired on 2026-11-30; renew it; \
             https on 0.0.0.0:443, http redirect on 0.0.0.0:80 for lunch.example.com; \
             certificate expires in 89 days (2027-03-01 09:00:00 UTC)",
        );
        check(
            Reload::Failed {
                at: START + HOUR,
                problem: "cannot reopen the access log /l: Is a directory".to_owned(),
                applied: true,
            },
            &ninety_days,
            START + HOUR,
            "reload failed at 2026-12-01 11:00:00 UTC, the new configuration is served, but \
             cannot reopen the access log /l: Is a directory; \
             https on 0.0.0.0:443, http redirect on 0.0.0.0:80 for lunch.example.com; \
             certificate expires in 89 days (2027-03-01 09:00:00 UTC)",
        );
        let six_days = info(&["a.example", "b.example", "c.example", "d.example", "e.example"], 160);
        check(
            Reload::Ok { at: START },
            &six_days,
            START + 120 * HOUR,
            "certificate /run/credentials/lunchd.service/fullchain.pem expires in 39 hours \
             (2026-12-08 01:00:00 UTC), renewal overdue: check the certbot timer (systemctl list-timers \
             certbot.timer), its log (journalctl -u certbot) and that the deploy hook reloads lunchd; \
             https on 0.0.0.0:443, http redirect on 0.0.0.0:80 for a.example b.example c.example and 2 more; \
             last reload ok at 2026-12-01 10:00:00 UTC",
        );
    }
}
