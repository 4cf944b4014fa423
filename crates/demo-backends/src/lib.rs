//! Demo backends for the BFF gateways: seeded, deterministic services with
//! fault injection, embeddable in-process or run as the `demo-backends` binary.
//!
//! * gRPC (one port): `demo.user.v1.UserService`,
//!   `demo.preferences.v1.PreferencesService` and
//!   `demo.subscription.v1.SubscriptionService`.
//! * REST (another port): `/content/...`, `/ads`, `/recommendations/{user_id}`,
//!   `/healthz`, and the admin API under `/admin/...` (faults, hit counters,
//!   last received `traceparent` per service).
//!
//! Data is derived from record indices only: users `user-0001` … `user-1000`
//! (each with preferences and a subscription `sub-u0001` …), items
//! `item-001` … `item-500`. Records carry `internal_*` fields that gateways
//! must never forward to clients.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use futures::FutureExt as _;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

mod control;
mod data;
mod graphql;
mod grpc;
mod rest;
mod subscriptions;

pub use data::{ITEM_COUNT, USER_COUNT};

/// Code generated from `proto/`: messages, servers and clients.
pub mod proto {
    /// `demo.user.v1`: accounts and their profile.
    pub mod user {
        tonic::include_proto!("demo.user.v1");
    }
    /// `demo.preferences.v1`: per-user app preferences.
    pub mod preferences {
        tonic::include_proto!("demo.preferences.v1");
    }
    /// `demo.subscription.v1`: plans users pay for, created by partners.
    pub mod subscription {
        tonic::include_proto!("demo.subscription.v1");
    }
}

use proto::{
    preferences::preferences_service_server::PreferencesServiceServer,
    subscription::subscription_service_server::SubscriptionServiceServer,
    user::user_service_server::UserServiceServer,
};

/// State shared by every front end.
#[derive(Debug)]
struct Shared {
    catalogue: data::Catalogue,
    subscriptions: subscriptions::SubscriptionStore,
    control: control::Control,
}

/// The demo backends: seeded data, created subscriptions and the admin
/// control plane. Clones share all state.
#[derive(Debug, Clone)]
pub struct DemoBackends {
    shared: Arc<Shared>,
}

impl Default for DemoBackends {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoBackends {
    /// Backends with freshly seeded data, no faults and zeroed counters.
    pub fn new() -> Self {
        let catalogue = data::Catalogue::new();
        let subscriptions =
            subscriptions::SubscriptionStore::new(catalogue.seeded_subscriptions().to_vec());
        Self {
            shared: Arc::new(Shared {
                catalogue,
                subscriptions,
                control: control::Control::default(),
            }),
        }
    }

    /// The REST API (content, ads, recommendations, health) and the admin API.
    pub fn rest_router(&self) -> axum::Router {
        rest::router(self.shared.clone())
    }

    /// The three gRPC services, ready for `tonic::transport::Server::add_routes`.
    pub fn grpc_routes(&self) -> Routes {
        let grpc = grpc::Grpc(self.shared.clone());
        Routes::new(UserServiceServer::new(grpc.clone()))
            .add_service(PreferencesServiceServer::new(grpc.clone()))
            .add_service(SubscriptionServiceServer::new(grpc))
    }

    /// Serves gRPC on `grpc` and REST on `rest` until `shutdown` resolves,
    /// then stops accepting connections, drains in-flight calls and returns.
    pub async fn serve(
        self,
        grpc: TcpListener,
        rest: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = shutdown.shared();
        tracing::info!(
            grpc = %grpc.local_addr()?,
            rest = %rest.local_addr()?,
            "demo backends listening"
        );
        // TCP_NODELAY, as gRPC servers set it: the answers of calls multiplexed on one
        // connection are written one after another, and Nagle's algorithm would hold each behind
        // the acknowledgement of the one before (40 ms or more).
        let grpc = TcpIncoming::from(grpc).with_nodelay(Some(true));
        let grpc_server = tonic::transport::Server::builder()
            .add_routes(self.grpc_routes())
            .serve_with_incoming_shutdown(grpc, shutdown.clone());
        let rest_server = axum::serve(rest, self.rest_router()).with_graceful_shutdown(shutdown);
        tokio::try_join!(
            async { grpc_server.await.context("gRPC server failed") },
            async { rest_server.await.context("REST server failed") },
        )?;
        tracing::info!("demo backends stopped");
        Ok(())
    }
}
