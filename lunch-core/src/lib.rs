//! The lunch itself: a validated [`Menu`] of dishes and the [`Picker`] that
//! chooses one.
//!
//! This crate is pure logic. It does no I/O, reads no clock and owns no
//! randomness: callers pass a [`RandomSource`] for random picks and a
//! [`Date`] for the daily pick. That keeps every behaviour here
//! deterministic and testable without a runtime.

mod date;
mod menu;
mod pick;
mod rng;

pub use date::{Date, DateError};
pub use menu::{Dish, DishSpec, Menu, MenuError};
pub use pick::{Mode, PickError, Picker, UnknownMode};
pub use rng::{RandomSource, SplitMix64, stable_hash};
