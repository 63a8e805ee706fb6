//! Dispatch over a scripted transport.
