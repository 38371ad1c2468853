//! The integration tests: one binary, one module per area. Every test starts real servers on
//! 127.0.0.1:0 and stops them.

mod admin;
mod breaker;
pub mod builtin;
mod canary;
mod cli;
mod cluster;
mod config;
mod conformance;
mod contract;
mod digest;
mod edge;
mod etcd;
mod examples;
mod grpc;
mod h2;
mod harness;
mod instances;
pub mod languages;
mod limits;
mod otlp;
mod plugins;
mod proxy;
mod reload;
mod sandbox;
mod scaffold;
pub mod services;
mod shutdown;
mod tls;
mod tracing;
mod websocket;
