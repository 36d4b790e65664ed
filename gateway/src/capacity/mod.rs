//! Capacity: the replicas each pool needs, now and ahead of demand.
//!
//! `erlang.rs` is the queueing model (M/M/c, Erlang C), `forecast.rs` the rate forecast
//! (robust Holt-Winters with a daily season). Pure.

pub mod erlang;
pub mod forecast;
