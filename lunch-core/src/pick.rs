//! Choosing a dish.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Date, Dish, Menu, RandomSource, SplitMix64, stable_hash};

const NONE: usize = usize::MAX;

/// How random picks are made. The daily pick is always weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every dish equally likely; weights are ignored.
    Uniform,
    /// Dishes drawn in proportion to their weights.
    #[default]
    Weighted,
    /// Weighted, but never the same dish twice in a row while there is a
    /// choice.
    NoRepeat,
}

/// A mode name that is not one of `uniform`, `weighted`, `no-repeat`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown picker mode `{0}`; expected one of `uniform`, `weighted`, `no-repeat`")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Mode, UnknownMode> {
        match s {
            "uniform" => Ok(Mode::Uniform),
            "weighted" => Ok(Mode::Weighted),
            "no-repeat" => Ok(Mode::NoRepeat),
            _ => Err(UnknownMode(s.to_owned())),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Uniform => "uniform",
            Mode::Weighted => "weighted",
            Mode::NoRepeat => "no-repeat",
        })
    }
}

/// Why no dish could be picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// No dish carries the requested tag.
    #[error("no dish on the menu is tagged `{tag}`")]
    NoMatch {
        /// The requested tag.
        tag: String,
    },
}

/// Picks dishes from a menu. Shareable between threads: the only state is
/// the last pick, kept for [`Mode::NoRepeat`].
#[derive(Debug)]
pub struct Picker {
    menu: Menu,
    mode: Mode,
    salt: String,
    last: AtomicUsize,
}

impl Picker {
    /// A picker over `menu`. `salt` distinguishes teams: two pickers with
    /// the same menu and salt agree on every daily pick.
    pub fn new(menu: Menu, mode: Mode, salt: &str) -> Picker {
        Picker {
            menu,
            mode,
            salt: salt.to_owned(),
            last: AtomicUsize::new(NONE),
        }
    }

    /// The menu picked from.
    pub fn menu(&self) -> &Menu {
        &self.menu
    }

    /// The mode of random picks.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A random dish, among those tagged `tag` when given.
    pub fn pick(&self, tag: Option<&str>, rng: &mut impl RandomSource) -> Result<&Dish, PickError> {
        let mut candidates = self.candidates(tag)?;
        let index = match self.mode {
            Mode::Uniform => {
                // Multiply-shift keeps the result uniform without a modulo bias
                // worth mentioning for menus this small.
                let n = candidates.len() as u128;
                let slot = ((u128::from(rng.next_u64()) * n) >> 64) as usize;
                candidates[slot]
            }
            Mode::Weighted => self.weighted(&candidates, rng),
            Mode::NoRepeat => {
                let last = self.last.load(Ordering::Relaxed);
                if candidates.len() > 1 {
                    candidates.retain(|&i| i != last);
                }
                let index = self.weighted(&candidates, rng);
                self.last.store(index, Ordering::Relaxed);
                index
            }
        };
        Ok(&self.menu.dishes()[index])
    }

    /// The dish of the day: a weighted pick seeded by the salt and `date`
    /// alone, so every instance, restart and release agrees on it.
    pub fn daily(&self, date: Date, tag: Option<&str>) -> Result<&Dish, PickError> {
        let candidates = self.candidates(tag)?;
        let date = date.to_string();
        let mut rng = SplitMix64::new(stable_hash(&[&self.salt, &date]));
        let index = self.weighted(&candidates, &mut rng);
        Ok(&self.menu.dishes()[index])
    }

    /// Indexes of the dishes carrying `tag`, or all of them.
    fn candidates(&self, tag: Option<&str>) -> Result<Vec<usize>, PickError> {
        let dishes = self.menu.dishes();
        let candidates: Vec<usize> = match tag {
            None => (0..dishes.len()).collect(),
            Some(tag) => (0..dishes.len()).filter(|&i| dishes[i].has_tag(tag)).collect(),
        };
        if candidates.is_empty() {
            return Err(PickError::NoMatch {
                tag: tag.unwrap_or_default().to_owned(),
            });
        }
        Ok(candidates)
    }

    fn weighted(&self, candidates: &[usize], rng: &mut impl RandomSource) -> usize {
        let dishes = self.menu.dishes();
        let total: f64 = candidates.iter().map(|&i| dishes[i].weight()).sum();
        let mut point = rng.next_f64() * total;
        for &i in candidates {
            point -= dishes[i].weight();
            if point < 0.0 {
                return i;
            }
        }
        // Rounding can leave a sliver past the last weight.
        candidates[candidates.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DishSpec;

    fn menu(weights: &[(&str, f64, &[&str])]) -> Menu {
        let specs = weights
            .iter()
            .map(|(name, weight, tags)| DishSpec {
                name: (*name).into(),
                weight: Some(*weight),
                tags: tags.iter().map(|t| (*t).into()).collect(),
            })
            .collect();
        Menu::new(specs).unwrap()
    }

    fn counts(picker: &Picker, tag: Option<&str>, draws: usize, seed: u64) -> Vec<usize> {
        let mut rng = SplitMix64::new(seed);
        let mut counts = vec![0; picker.menu().dishes().len()];
        for _ in 0..draws {
            let dish = picker.pick(tag, &mut rng).unwrap();
            counts[picker.menu().dishes().iter().position(|d| d == dish).unwrap()] += 1;
        }
        counts
    }

    /// Pearson's chi-squared statistic of `observed` against `weights`.
    fn chi_squared(observed: &[usize], weights: &[f64]) -> f64 {
        let n: usize = observed.iter().sum();
        let total: f64 = weights.iter().sum();
        observed
            .iter()
            .zip(weights)
            .map(|(&o, &w)| {
                let expected = n as f64 * w / total;
                (o as f64 - expected).powi(2) / expected
            })
            .sum()
    }

    // Critical value of chi-squared with 3 degrees of freedom at p = 0.001.
    const CHI2_3DF_P001: f64 = 16.27;

    #[test]
    fn weighted_picks_follow_weights() {
        let picker = Picker::new(
            menu(&[("a", 1.0, &[]), ("b", 2.0, &[]), ("c", 3.0, &[]), ("d", 4.0, &[])]),
            Mode::Weighted,
            "",
        );
        let observed = counts(&picker, None, 100_000, 42);
        let chi2 = chi_squared(&observed, &[1.0, 2.0, 3.0, 4.0]);
        assert!(chi2 < CHI2_3DF_P001, "chi2 = {chi2}, counts = {observed:?}");
        // And it is not merely uniform: the heaviest dish wins clearly.
        assert!(observed[3] > 3 * observed[0], "{observed:?}");
    }

    #[test]
    fn uniform_picks_ignore_weights() {
        let picker = Picker::new(
            menu(&[("a", 1.0, &[]), ("b", 2.0, &[]), ("c", 3.0, &[]), ("d", 40.0, &[])]),
            Mode::Uniform,
            "",
        );
        let observed = counts(&picker, None, 100_000, 7);
        let chi2 = chi_squared(&observed, &[1.0; 4]);
        assert!(chi2 < CHI2_3DF_P001, "chi2 = {chi2}, counts = {observed:?}");
    }

    #[test]
    fn no_repeat_never_repeats() {
        let picker = Picker::new(menu(&[("a", 100.0, &[]), ("b", 1.0, &[])]), Mode::NoRepeat, "");
        let mut rng = SplitMix64::new(1);
        let mut last = picker.pick(None, &mut rng).unwrap().name().to_owned();
        for _ in 0..1000 {
            let next = picker.pick(None, &mut rng).unwrap().name().to_owned();
            assert_ne!(next, last);
            last = next;
        }
    }

    #[test]
    fn no_repeat_with_one_candidate_still_answers() {
        let picker = Picker::new(menu(&[("a", 1.0, &["x"]), ("b", 1.0, &[])]), Mode::NoRepeat, "");
        let mut rng = SplitMix64::new(1);
        for _ in 0..3 {
            assert_eq!(picker.pick(Some("x"), &mut rng).unwrap().name(), "a");
        }
    }

    #[test]
    fn tag_filter() {
        let picker = Picker::new(Menu::builtin(), Mode::Weighted, "");
        let mut rng = SplitMix64::new(3);
        for _ in 0..100 {
            let dish = picker.pick(Some("vegetarian"), &mut rng).unwrap();
            assert!(["Soup", "Salad"].contains(&dish.name()), "{}", dish.name());
        }
        assert_eq!(
            picker.pick(Some("dessert"), &mut rng).unwrap_err().to_string(),
            "no dish on the menu is tagged `dessert`"
        );
    }

    #[test]
    fn daily_pick_is_deterministic() {
        let date = Date::from_ymd(2026, 11, 30).unwrap();
        let a = Picker::new(Menu::builtin(), Mode::Uniform, "team-a");
        let b = Picker::new(Menu::builtin(), Mode::NoRepeat, "team-a");
        // Independent pickers (other instances, restarts) agree, whatever
        // their random mode and however often asked.
        for _ in 0..10 {
            assert_eq!(a.daily(date, None).unwrap(), b.daily(date, None).unwrap());
        }
        // Pinned so that an upgrade does not change a team's lunch.
        let week: Vec<&str> = (0..7)
            .map(|d| {
                a.daily(Date::from_days_since_epoch(date.days_since_epoch() + d), None)
                    .unwrap()
                    .name()
            })
            .collect();
        assert_eq!(week, PINNED_WEEK);
    }

    const PINNED_WEEK: [&str; 7] = ["Sandwich", "Salad", "Sushi", "Soup", "Sandwich", "Soup", "Soup"];

    #[test]
    fn daily_pick_varies_with_date_and_salt() {
        let start = Date::from_ymd(2026, 1, 1).unwrap().days_since_epoch();
        let a = Picker::new(Menu::builtin(), Mode::Weighted, "team-a");
        let b = Picker::new(Menu::builtin(), Mode::Weighted, "team-b");
        let year: Vec<(&str, &str)> = (0..365)
            .map(|d| {
                let date = Date::from_days_since_epoch(start + d);
                (a.daily(date, None).unwrap().name(), b.daily(date, None).unwrap().name())
            })
            .collect();
        let differ = year.iter().filter(|(x, y)| x != y).count();
        assert!(differ > 200, "teams should mostly differ, differ on {differ} days");
        let mut seen: Vec<&str> = year.iter().map(|(x, _)| *x).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 5, "every dish should come up within a year");
    }

    #[test]
    fn daily_pick_respects_tags() {
        let picker = Picker::new(Menu::builtin(), Mode::Weighted, "");
        let start = Date::from_ymd(2026, 1, 1).unwrap().days_since_epoch();
        for d in 0..100 {
            let dish = picker
                .daily(Date::from_days_since_epoch(start + d), Some("fish"))
                .unwrap();
            assert_eq!(dish.name(), "Sushi");
        }
    }

    #[test]
    fn modes_parse() {
        for mode in [Mode::Uniform, Mode::Weighted, Mode::NoRepeat] {
            assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
        }
        assert!("random".parse::<Mode>().is_err());
    }
}
