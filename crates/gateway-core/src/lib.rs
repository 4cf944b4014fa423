//! # gateway-core
//!
//! The machinery shared by every Backends-for-Frontends gateway of this workspace. A BFF binary
//! declares its routes and client-specific shaping; everything below comes from here.
//!
//! ## The request pipeline
//!
//! ```mermaid
//! flowchart TD
//!     A[receive: HTTP/1.1 or HTTP/2] --> B[edge: request id, traceparent, strip identity headers]
//!     B --> C[access log + metrics]
//!     C --> D[bounds: request deadline, body limit]
//!     D --> E{authenticate: JWT or API key}
//!     E -- refused --> X1[401 / 503 problem+json]
//!     E --> F{rate limit: GCRA per principal and route policy}
//!     F -- over --> X2[429 + Retry-After]
//!     F --> G{scope check}
//!     G -- missing --> X3[403 INSUFFICIENT_SCOPE]
//!     G --> H{cache lookup}
//!     H -- fresh --> R[respond, X-Cache: HIT]
//!     H -- miss --> I[fan out to upstreams in parallel, each with its own timeout]
//!     I --> J[aggregate and shape; mark missing parts]
//!     J --> K[store if complete] --> R2[respond, X-Cache: MISS, X-Degraded]
//! ```
//!
//! Modules follow the stages: [`edge`], [`auth`], [`ratelimit`], [`cache`], [`upstream`],
//! [`aggregate`], with [`config`], [`telemetry`], [`error`] and [`server`] around them. A
//! pass-through route ([`proxy`]) takes the same stages up to the rate limit, then forwards the
//! request as it is; [`app`] serves those routes ahead of axum's router.

#![warn(missing_docs)]

pub mod aggregate;
pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod edge;
pub mod error;
pub mod extract;
pub mod fuzzing;
pub mod idempotency;
pub mod listener;
pub mod proxy;
pub mod ratelimit;
pub mod server;
mod stage;
mod stall;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod upstream;

pub use aggregate::{ApiResponse, FanOut, Gathered, Need, Outcome, Shaped};
pub use auth::{Principal, RequireScopeLayer};
pub use config::Config;
pub use error::GatewayError;
pub use server::{Gateway, RequestCheck};
pub use upstream::{CallContext, UpstreamError};
