//! Example sources and sinks for real I/O, used by the demo workload and
//! meant to be copied: lines from a file or stdin, lines from TCP clients,
//! and NDJSON written to a file. Each is a small, complete piece with the
//! limits a service facing real input needs (bounded line length, a bounded
//! number of connections, buffered writes, cancel-safe reads).

pub mod lines;
pub mod ndjson;
pub mod tcp;
