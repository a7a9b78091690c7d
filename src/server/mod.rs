//! The server layer: the doors through which clients reach a node. Each
//! door turns its wire format into the ingestion layer's messages and hands
//! them to an [`IngestSink`](crate::ingest::IngestSink).
//!
//! - [`http`]: the Segment-compatible HTTP endpoint.

pub mod http;
