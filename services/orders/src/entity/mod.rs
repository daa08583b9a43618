//! SeaORM entities of the two tables this crate owns.

pub mod orders;
pub mod sales;
