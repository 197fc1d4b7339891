//! The testing surface: a simulated disk for crash and fault-injection tests.
//!
//! [`SimDir`] is a [`crate::backend::StorageDir`] that keeps every file in
//! memory with a durable image and a volatile write cache. Open a store on it
//! with [`crate::Store::open_in`], cut the power with [`SimDir::crash`], and
//! reopen the surviving image to check what recovery makes of it.

pub mod sim;

pub use sim::{LossMode, SimDir, SimStats};
