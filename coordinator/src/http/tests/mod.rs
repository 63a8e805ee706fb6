//! Tests of the HTTP layer as a whole.

mod reads;
mod wire;
