//! placeholder
pub mod postgres;
