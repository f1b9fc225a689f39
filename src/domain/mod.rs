//! Pure rules of the product: no I/O, no clock, no database. Everything here is tested exhaustively.

pub mod attendance;
pub mod dates;
pub mod identifiers;
pub mod names;
pub mod org;
pub mod placement;
pub mod routing;
pub mod tree;
pub mod visibility;
