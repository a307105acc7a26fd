//! The watch over the serving certificate's end: a warning when renewal
//! is due and has not happened, an error when an outage is near, and an
//! error every hour once it has expired.
//!
//! The thresholds are fractions of the certificate's own lifetime, so they
//! fit a 6-day (160 h) certificate as well as a 90-day one: certbot renews
//! with a third of the lifetime left, so less than that means renewal has
//! failed or its deploy hook did not reload lunchd. Less than a tenth, or
//! under 24 hours, leaves little time to fix it.
//!
//! lunchd checks at start, at every reload and every hour ([`run`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lunch_net::tls::{CertificateInfo, CertificateStore};

/// How often the running daemon looks again.
pub const PERIOD: Duration = Duration::from_secs(3600);

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

/// How close the certificate is to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Urgency {
    /// More than a third of its lifetime left.
    Fine,
    /// Less than a third left: the renewal is overdue (a warning).
    Renew,
    /// Less than a tenth, or under 24 hours, left (an error).
    Soon,
    /// Past its end; clients refuse it (an error).
    Expired,
}

/// The urgency for `remaining` seconds of validity left out of a lifetime
/// of `lifetime` seconds.
pub fn urgency(remaining: i64, lifetime: i64) -> Urgency {
    let lifetime = lifetime.max(1);
    if remaining <= 0 {
        Urgency::Expired
    } else if remaining < (lifetime / 10).max(DAY) {
        Urgency::Soon
    } else if remaining < lifetime / 3 {
        Urgency::Renew
    } else {
        Urgency::Fine
    }
}

/// The certificate's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// How close it is to its end.
    pub urgency: Urgency,
    /// Seconds of validity left; negative once expired.
    pub remaining: i64,
}

impl Check {
    /// `info` seen at `now` (seconds since the epoch).
    pub fn of(info: &CertificateInfo, now: i64) -> Check {
        let (not_before, not_after) = (unix(info.not_before), unix(info.not_after));
        let remaining = not_after - now;
        Check {
            urgency: urgency(remaining, not_after - not_before),
            remaining,
        }
    }

    /// The part of the STATUS= line about the certificate.
    pub fn status(&self, info: &CertificateInfo) -> String {
        let not_after = format_utc(unix(info.not_after));
        match self.urgency {
            Urgency::Fine => format!("certificate expires in {} ({not_after})", span(self.remaining)),
            Urgency::Renew | Urgency::Soon => format!(
                "certificate {} expires in {} ({not_after}), renewal overdue: {WHERE_TO_LOOK}",
                info.source,
                span(self.remaining)
            ),
            Urgency::Expired => format!(
                "CERTIFICATE EXPIRED {} ago ({not_after}), clients refuse it: renew {}; {WHERE_TO_LOOK}",
                span(-self.remaining),
                info.source
            ),
        }
    }
}

const WHERE_TO_LOOK: &str = "check the certbot timer (systemctl list-timers certbot.timer), \
     its log (journalctl -u certbot) and that the deploy hook reloads lunchd";

/// A duration for people: days when there are three or more, else hours
/// (a 6-day certificate's 53 hours are not "2 days"), else minutes.
pub fn span(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    if seconds >= 3 * DAY {
        plural(seconds / DAY, "day")
    } else if seconds >= HOUR {
        plural(seconds / HOUR, "hour")
    } else if seconds >= 60 {
        plural(seconds / 60, "minute")
    } else {
        "under a minute".to_owned()
    }
}

/// Why a check is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occasion {
    /// At start or after a reload: whatever is wrong is said again.
    Load,
    /// The hourly look.
    Hourly,
}

/// What was last said, so that the hourly look repeats a warning daily
/// and errors hourly rather than a warning every hour.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Said {
    serial: String,
    urgency: Urgency,
    at: i64,
}

fn should_say(last: Option<&Said>, serial: &str, urgency: Urgency, now: i64, occasion: Occasion) -> bool {
    match (urgency, occasion) {
        (Urgency::Fine, _) => false,
        (_, Occasion::Load) | (Urgency::Soon | Urgency::Expired, Occasion::Hourly) => true,
        (Urgency::Renew, Occasion::Hourly) => match last {
            Some(last) => last.serial != serial || last.urgency != urgency || now - last.at >= DAY,
            None => true,
        },
    }
}

/// Remembers what was said about the certificate.
#[derive(Debug, Default)]
pub struct Watch {
    last: Mutex<Option<Said>>,
}

impl Watch {
    /// Checks `info` at `now` and logs what needs attention.
    pub fn observe(&self, info: &CertificateInfo, now: i64, occasion: Occasion) -> Check {
        let check = Check::of(info, now);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if should_say(last.as_ref(), &info.serial, check.urgency, now, occasion) {
            log(info, &check);
            *last = Some(Said {
                serial: info.serial.clone(),
                urgency: check.urgency,
                at: now,
            });
        }
        check
    }
}

fn log(info: &CertificateInfo, check: &Check) {
    let file = &info.source;
    let serial = &info.serial;
    // One token, for `key=value` readers.
    let not_after = format_utc(unix(info.not_after))
        .replacen(' ', "T", 1)
        .replace(" UTC", "Z");
    let lifetime = span(unix(info.not_after) - unix(info.not_before));
    match check.urgency {
        Urgency::Fine => {}
        Urgency::Renew => tracing::warn!(
            %file, %serial, %not_after,
            "the certificate in {file} expires in {}, less than a third of its {lifetime}: it should have been \
             renewed by now; {WHERE_TO_LOOK}",
            span(check.remaining)
        ),
        Urgency::Soon => tracing::error!(
            %file, %serial, %not_after,
            "the certificate in {file} expires in {}, out of {lifetime}: renew it now or clients will refuse \
             lunchd; {WHERE_TO_LOOK}",
            span(check.remaining)
        ),
        Urgency::Expired => tracing::error!(
            %file, %serial, %not_after,
            "the certificate in {file} expired {} ago: clients refuse lunchd; renew it (certbot renew) and \
             reload; {WHERE_TO_LOOK}",
            span(-check.remaining)
        ),
    }
}

/// `time` in whole seconds since the epoch, rounded down, as lunch-net
/// checks certificate validity.
pub fn unix(time: SystemTime) -> i64 {
    lunch_net::tls::unix_seconds(time)
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the epoch.
pub fn format_utc(secs: i64) -> String {
    let date = lunch_core::Date::from_days_since_epoch(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!("{date} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Looks at the serving certificate every [`PERIOD`] (the first look is
/// one period after the start, which made its own) and hands the new
/// STATUS= line to `status`.
pub async fn run(
    watch: Arc<Watch>,
    store: Arc<CertificateStore>,
    clock: impl Fn() -> i64,
    status: impl Fn(&CertificateInfo, &Check),
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let info = store.info();
        let check = watch.observe(&info, clock(), Occasion::Hourly);
        status(&info, &check);
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn check(remaining_hours: i64, lifetime_hours: i64, expected: Urgency) {
        assert_eq!(
            urgency(remaining_hours * HOUR, lifetime_hours * HOUR),
            expected,
            "{remaining_hours} h left of {lifetime_hours} h"
        );
    }

    #[test]
    fn six_day_certificates() {
        // 160 h: a third is 53.3 h, a tenth 16 h, so 24 h decides.
        check(160, 160, Urgency::Fine);
        check(54, 160, Urgency::Fine);
        check(53, 160, Urgency::Renew);
        check(32, 160, Urgency::Renew);
        check(24, 160, Urgency::Renew);
        check(23, 160, Urgency::Soon);
        check(1, 160, Urgency::Soon);
        check(0, 160, Urgency::Expired);
        check(-5, 160, Urgency::Expired);
    }

    #[test]
    fn ninety_day_certificates() {
        // 2160 h: a third is 30 days, a tenth 9 days.
        check(31 * 24, 2160, Urgency::Fine);
        check(30 * 24, 2160, Urgency::Fine);
        check(30 * 24 - 1, 2160, Urgency::Renew);
        check(18 * 24, 2160, Urgency::Renew);
        check(9 * 24, 2160, Urgency::Renew);
        check(9 * 24 - 1, 2160, Urgency::Soon);
        check(0, 2160, Urgency::Expired);
    }

    #[test]
    fn odd_lifetimes() {
        // Under a day left is an error even for a long-lived certificate.
        check(23, 24 * 365 * 10, Urgency::Soon);
        // A one-day certificate is never comfortable after its first third.
        check(20, 24, Urgency::Soon);
        check(24, 24, Urgency::Fine);
        // A certificate whose end precedes its start.
        check(30, -10, Urgency::Fine);
        check(5, -10, Urgency::Soon);
        check(-1, 0, Urgency::Expired);
    }

    #[test]
    fn spans_for_people() {
        let cases = [
            (89 * DAY + 5 * HOUR, "89 days"),
            (3 * DAY, "3 days"),
            (3 * DAY - 1, "71 hours"),
            (2 * DAY, "48 hours"),
            (HOUR, "1 hour"),
            (HOUR - 1, "59 minutes"),
            (60, "1 minute"),
            (59, "under a minute"),
            (-5, "under a minute"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(span(seconds), expected, "{seconds} s");
        }
    }

    #[test]
    fn what_is_said_again() {
        let said = |serial: &str, urgency, at| Said {
            serial: serial.to_owned(),
            urgency,
            at,
        };
        use Occasion::{Hourly, Load};
        use Urgency::{Expired, Fine, Renew, Soon};
        let cases: &[(Option<Said>, Urgency, i64, Occasion, bool)] = &[
            (None, Fine, 0, Load, false),
            (None, Fine, 0, Hourly, false),
            (None, Renew, 0, Load, true),
            (None, Renew, 0, Hourly, true),
            (Some(said("01", Renew, 0)), Renew, HOUR, Hourly, false),
            (Some(said("01", Renew, 0)), Renew, DAY - 1, Hourly, false),
            (Some(said("01", Renew, 0)), Renew, DAY, Hourly, true),
            (Some(said("01", Renew, 0)), Renew, HOUR, Load, true),
            (Some(said("02", Renew, 0)), Renew, HOUR, Hourly, true),
            (Some(said("01", Soon, 0)), Renew, HOUR, Hourly, true),
            (Some(said("01", Soon, 0)), Soon, HOUR, Hourly, true),
            (Some(said("01", Expired, 0)), Expired, HOUR, Hourly, true),
        ];
        for (last, urgency, now, occasion, expected) in cases {
            assert_eq!(
                should_say(last.as_ref(), "01", *urgency, *now, *occasion),
                *expected,
                "{last:?} then {urgency:?} at {now} ({occasion:?})"
            );
        }
    }

    #[test]
    fn statuses_name_the_file_and_where_to_look_only_when_needed() {
        let info = info(1_000_000, 1_000_000 + 160 * HOUR);
        let fine = Check::of(&info, 1_000_000).status(&info);
        assert_eq!(fine, "certificate expires in 6 days (1970-01-19 05:46:40 UTC)");
        let renew = Check::of(&info, 1_000_000 + 120 * HOUR).status(&info);
        assert!(
            renew.starts_with("certificate /etc/lunchd/fullchain.pem expires in 40 hours"),
            "{renew}"
        );
        assert!(renew.contains("journalctl -u certbot"), "{renew}");
        let expired = Check::of(&info, 1_000_000 + 163 * HOUR).status(&info);
        assert!(expired.starts_with("CERTIFICATE EXPIRED 3 hours ago"), "{expired}");
    }

    /// The hourly look, in paused time: a 160-hour certificate started with
    /// 60 hours left warns as it passes a third, again a day later, then
    /// errs every hour from 24 hours left, and past its end.
    #[tokio::test(start_paused = true)]
    async fn the_hourly_look_escalates() {
        let start = unix_now();
        let store = CertificateStore::new(certificate(start - 100 * HOUR, start + 60 * HOUR));
        let (log, _guard) = capture_log();
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let watch = Arc::new(Watch::default());
        let began = tokio::time::Instant::now();
        let clock = move || start + i64::try_from(began.elapsed().as_secs()).unwrap();
        assert_eq!(
            watch.observe(&store.info(), clock(), Occasion::Load).urgency,
            Urgency::Fine
        );
        let seen = Arc::clone(&statuses);
        let task = tokio::spawn(run(watch, store, clock, move |info, check| {
            seen.lock().unwrap().push((check.urgency, check.status(info)));
        }));
        tokio::time::sleep(Duration::from_secs(66 * 3600 + 1800)).await;
        task.abort();

        let statuses = statuses.lock().unwrap();
        let urgencies: Vec<Urgency> = statuses.iter().map(|(u, _)| *u).collect();
        let mut expected = vec![Urgency::Fine; 6];
        expected.extend([Urgency::Renew; 30]);
        expected.extend([Urgency::Soon; 23]);
        expected.extend([Urgency::Expired; 7]);
        assert_eq!(urgencies, expected);
        assert!(
            statuses[0].1.starts_with("certificate expires in 59 hours"),
            "{}",
            statuses[0].1
        );
        assert!(statuses[6].1.contains("expires in 53 hours"), "{}", statuses[6].1);
        assert!(statuses[36].1.contains("expires in 23 hours"), "{}", statuses[36].1);

        let log = log.lock().unwrap();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        let count = |level: &str, text: &str| lines.iter().filter(|l| l.contains(level) && l.contains(text)).count();
        assert_eq!(count("WARN", "less than a third"), 2, "{log}");
        assert_eq!(count("ERROR", "renew it now"), 23, "{log}");
        assert_eq!(count("ERROR", "expired"), 7, "{log}");
        assert_eq!(lines.len(), 32, "{log}");
        assert!(
            lines[0].contains("expires in 53 hours, less than a third of its 6 days"),
            "{log}"
        );
        assert!(lines[0].contains("serial=2a"), "{log}");
        assert!(lines[0].contains("file=(test)"), "{log}");
        let not_after = format_utc(start + 60 * HOUR).replacen(' ', "T", 1).replace(" UTC", "Z");
        assert!(lines[0].contains(&format!("not_after={not_after}")), "{log}");
    }

    /// A certificate for `lunch.test` valid between the two times.
    fn certificate(not_before: i64, not_after: i64) -> lunch_net::tls::LoadedCertificate {
        let at = |secs: i64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs.try_into().unwrap());
        let mut params = rcgen::CertificateParams::new(vec!["lunch.test".to_owned()]).unwrap();
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x2a]));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let name = std::path::Path::new("(test)");
        lunch_net::tls::LoadedCertificate::from_pem(
            key.serialize_pem().as_bytes(),
            name,
            cert.pem().as_bytes(),
            name,
            std::time::SystemTime::now(),
        )
        .unwrap()
    }

    /// Log records of this thread, in the human format without colours.
    fn capture_log() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(Arc::clone(&buffer));
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(move || sink.clone())
            .finish();
        (buffer, tracing::subscriber::set_default(subscriber))
    }

    #[test]
    fn utc_formatting() {
        let utc = |secs: u64| format_utc(unix(UNIX_EPOCH + Duration::from_secs(secs)));
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_824_000 + 3661), "2026-11-28 01:01:01 UTC");
        assert_eq!(
            format_utc(unix(UNIX_EPOCH - Duration::from_secs(1))),
            "1969-12-31 23:59:59 UTC"
        );
        assert_eq!(unix(UNIX_EPOCH - Duration::from_millis(1)), -1);
        assert_eq!(unix(UNIX_EPOCH + Duration::from_millis(1999)), 1);
    }

    fn info(not_before: i64, not_after: i64) -> CertificateInfo {
        let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.try_into().unwrap());
        CertificateInfo {
            subject: "CN=lunch.test".to_owned(),
            names: vec!["lunch.test".to_owned()],
            serial: "01".to_owned(),
            not_before: at(not_before),
            not_after: at(not_after),
            source: "/etc/lunchd/fullchain.pem".to_owned(),
        }
    }
}
