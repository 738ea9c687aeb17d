//! Observation: statistics and the heap map. Reads the layers below through their own
//! counters and views; nothing below calls it.

pub mod heapmap;
pub mod stats;
