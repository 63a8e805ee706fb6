//! Tests of the HTTP layer as a whole.

mod errors;
mod limits;
mod reads;
mod wire;
