//! Tests of the HTTP layer as a whole.

mod limits;
mod wire;
