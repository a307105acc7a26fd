//! The menu: what there is to pick from, validated once.

use std::fmt;

/// The longest dish name or tag accepted, in characters.
const MAX_NAME_CHARS: usize = 100;
/// The most dishes on one menu.
const MAX_DISHES: usize = 1000;

/// A dish as the configuration describes it, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct DishSpec {
    /// What is shown to people.
    pub name: String,
    /// Relative likelihood for weighted picks; 1 when absent.
    pub weight: Option<f64>,
    /// Labels to filter by, such as `vegetarian` or `quick`.
    pub tags: Vec<String>,
}

impl DishSpec {
    /// A dish with weight 1 and the given tags.
    pub fn new(name: &str, tags: &[&str]) -> DishSpec {
        DishSpec {
            name: name.to_owned(),
            weight: None,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }
    }
}

/// A validated dish.
#[derive(Debug, Clone, PartialEq)]
pub struct Dish {
    name: String,
    weight: f64,
    tags: Vec<String>,
}

impl Dish {
    /// The name, as configured (trimmed).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The weight: finite and positive.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The tags, lowercase, without duplicates, in configured order.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Whether the dish carries `tag` (compared case-insensitively).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }
}

/// A non-empty list of dishes with unique names, positive weights and clean
/// tags.
#[derive(Debug, Clone, PartialEq)]
pub struct Menu {
    dishes: Vec<Dish>,
}

/// One problem found while validating a menu. `index` is the position of the
/// dish in the list given to [`Menu::new`], so callers can point at the
/// configuration entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MenuError {
    /// No dishes at all.
    #[error("the menu is empty; add at least one dish")]
    Empty,
    /// More dishes than [`Menu::new`] accepts.
    #[error("the menu has {count} dishes; at most {MAX_DISHES} are allowed")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// A name that is empty or only whitespace.
    #[error("dish {} has an empty name", index + 1)]
    EmptyName {
        /// Position of the dish.
        index: usize,
    },
    /// A name that is too long or contains control characters.
    #[error("dish {} name is not printable text of at most {MAX_NAME_CHARS} characters", index + 1)]
    BadName {
        /// Position of the dish.
        index: usize,
    },
    /// The same name twice (compared case-insensitively).
    #[error("dish {} `{name}` duplicates dish {}; names must be unique", index + 1, first + 1)]
    DuplicateName {
        /// Position of the second occurrence.
        index: usize,
        /// Position of the first occurrence.
        first: usize,
        /// The name.
        name: String,
    },
    /// A weight that is zero, negative, infinite or NaN.
    #[error("dish {} `{name}` has weight {weight}; weights must be finite and greater than 0", index + 1)]
    BadWeight {
        /// Position of the dish.
        index: usize,
        /// The dish's name.
        name: String,
        /// The refused weight.
        weight: f64,
    },
    /// A tag that is empty or not made of letters, digits, `-` and `_`.
    #[error("dish {} has tag `{tag}`; tags are letters, digits, `-` and `_`, at most {MAX_NAME_CHARS} long", index + 1)]
    BadTag {
        /// Position of the dish.
        index: usize,
        /// The refused tag.
        tag: String,
    },
}

impl MenuError {
    /// The position of the dish the problem is about, if it is about one.
    pub fn index(&self) -> Option<usize> {
        match self {
            MenuError::Empty | MenuError::TooMany { .. } => None,
            MenuError::EmptyName { index }
            | MenuError::BadName { index }
            | MenuError::DuplicateName { index, .. }
            | MenuError::BadWeight { index, .. }
            | MenuError::BadTag { index, .. } => Some(*index),
        }
    }

    /// The field of the dish the problem is about: `name`, `weight` or `tags`.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            MenuError::Empty | MenuError::TooMany { .. } => None,
            MenuError::EmptyName { .. } | MenuError::BadName { .. } | MenuError::DuplicateName { .. } => Some("name"),
            MenuError::BadWeight { .. } => Some("weight"),
            MenuError::BadTag { .. } => Some("tags"),
        }
    }
}

impl Menu {
    /// Validates `specs`, reporting every problem found, not just the first.
    pub fn new(specs: Vec<DishSpec>) -> Result<Menu, Vec<MenuError>> {
        if specs.is_empty() {
            return Err(vec![MenuError::Empty]);
        }
        if specs.len() > MAX_DISHES {
            return Err(vec![MenuError::TooMany { count: specs.len() }]);
        }
        let mut errors = Vec::new();
        let mut dishes: Vec<Dish> = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            let name = spec.name.trim().to_owned();
            if name.is_empty() {
                errors.push(MenuError::EmptyName { index });
            } else if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
                errors.push(MenuError::BadName { index });
            } else if let Some(first) = dishes.iter().position(|d| d.name.to_lowercase() == name.to_lowercase()) {
                errors.push(MenuError::DuplicateName {
                    index,
                    first,
                    name: name.clone(),
                });
            }
            let weight = spec.weight.unwrap_or(1.0);
            if !(weight.is_finite() && weight > 0.0) {
                errors.push(MenuError::BadWeight {
                    index,
                    name: name.clone(),
                    weight,
                });
            }
            let mut tags: Vec<String> = Vec::with_capacity(spec.tags.len());
            for tag in spec.tags {
                if !is_valid_tag(&tag) {
                    errors.push(MenuError::BadTag { index, tag });
                    continue;
                }
                let tag = tag.to_ascii_lowercase();
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
            // Keep the slot even when invalid so later `first` indexes stay
            // true to the input positions.
            dishes.push(Dish { name, weight, tags });
        }
        if errors.is_empty() {
            Ok(Menu { dishes })
        } else {
            Err(errors)
        }
    }

    /// The seed's five dishes, used when no menu is configured.
    pub fn builtin() -> Menu {
        let specs = vec![
            DishSpec::new("Sandwich", &["quick"]),
            DishSpec::new("Soup", &["vegetarian", "warm"]),
            DishSpec::new("Salad", &["vegetarian", "quick"]),
            DishSpec::new("Burger", &["warm"]),
            DishSpec::new("Sushi", &["fish"]),
        ];
        Menu::new(specs).unwrap_or_else(|_| unreachable!("the built-in menu is valid"))
    }

    /// The dishes in configured order.
    pub fn dishes(&self) -> &[Dish] {
        &self.dishes
    }

    /// Every tag used on the menu, in order of first appearance.
    pub fn tags(&self) -> Vec<&str> {
        let mut tags: Vec<&str> = Vec::new();
        for tag in self.dishes.iter().flat_map(|d| d.tags.iter()) {
            if !tags.contains(&tag.as_str()) {
                tags.push(tag);
            }
        }
        tags
    }
}

impl fmt::Display for Menu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.dishes.iter().map(|d| d.name.as_str()).collect();
        f.write_str(&names.join(", "))
    }
}

/// Whether `tag` is acceptable: ASCII letters, digits, `-` and `_`, not
/// empty, at most 100 bytes. Tags travel in URLs, so they stay URL-safe.
pub(crate) fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_NAME_CHARS
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, weight: Option<f64>, tags: &[&str]) -> DishSpec {
        DishSpec {
            name: name.into(),
            weight,
            tags: tags.iter().map(|t| (*t).into()).collect(),
        }
    }

    fn check(specs: Vec<DishSpec>, expected: &[&str]) {
        let errors = Menu::new(specs).expect_err("menu should be refused");
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages, expected);
    }

    #[test]
    fn builtin_menu_is_the_seed_five() {
        assert_eq!(Menu::builtin().to_string(), "Sandwich, Soup, Salad, Burger, Sushi");
        assert_eq!(Menu::builtin().tags(), ["quick", "vegetarian", "warm", "fish"]);
    }

    #[test]
    fn validation_reports_every_problem() {
        check(vec![], &["the menu is empty; add at least one dish"]);
        check(
            vec![
                spec("Soup", None, &[]),
                spec("  ", Some(2.0), &[]),
                spec("soup", Some(0.0), &["hot stuff", ""]),
                spec("Stew", Some(f64::NAN), &[]),
                spec("Pie", Some(-1.0), &[]),
                spec("Pasta", Some(f64::INFINITY), &[]),
                spec("Bad\nname", None, &[]),
            ],
            &[
                "dish 2 has an empty name",
                "dish 3 `soup` duplicates dish 1; names must be unique",
                "dish 3 `soup` has weight 0; weights must be finite and greater than 0",
                "dish 3 has tag `hot stuff`; tags are letters, digits, `-` and `_`, at most 100 long",
                "dish 3 has tag ``; tags are letters, digits, `-` and `_`, at most 100 long",
                "dish 4 `Stew` has weight NaN; weights must be finite and greater than 0",
                "dish 5 `Pie` has weight -1; weights must be finite and greater than 0",
                "dish 6 `Pasta` has weight inf; weights must be finite and greater than 0",
                "dish 7 name is not printable text of at most 100 characters",
            ],
        );
    }

    #[test]
    fn errors_point_at_fields() {
        let errors = Menu::new(vec![spec("A", Some(0.0), &[])]).unwrap_err();
        assert_eq!(errors[0].index(), Some(0));
        assert_eq!(errors[0].field(), Some("weight"));
    }

    #[test]
    fn tags_are_normalised() {
        let menu = Menu::new(vec![spec(" Soup ", None, &["Warm", "warm", "VEGAN"])]).unwrap();
        let soup = &menu.dishes()[0];
        assert_eq!(soup.name(), "Soup");
        assert_eq!(soup.tags(), ["warm", "vegan"]);
        assert!(soup.has_tag("Vegan"));
    }
}
