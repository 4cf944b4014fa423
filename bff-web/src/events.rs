//! `GET /api/events`: a server-sent-event stream of live updates for the signed-in user.
//!
//! The backends do not push, so each stream polls the user's subscription and recommendations
//! every `client.events_poll_ms` and sends an event when one changed (and once at the start):
//! `subscription` and `recommendations`, each with the JSON of the new state. A comment line
//! (`:`) goes out every `client.events_heartbeat_secs` so proxies keep the connection open. Every
//! stream ends when the gateway starts draining, so shutdowns are not held up by open streams.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use backend_clients as backends;
use futures::stream::{self, Stream, StreamExt};
use gateway_core::{CallContext, FanOut, GatewayError, Need};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Gw;

/// State of the events route: the cap on open streams.
#[derive(Clone)]
pub struct Streams(pub Arc<Semaphore>);

struct Poll {
    gw: Gw,
    ctx: CallContext,
    user_id: String,
    every: Duration,
    last: [Option<Value>; 2],
    first: bool,
    _slot: OwnedSemaphorePermit,
}

const KINDS: [&str; 2] = ["subscription", "recommendations"];

/// The handler.
pub async fn events(
    State(gw): State<Gw>,
    Extension(streams): Extension<Streams>,
    ctx: CallContext,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, GatewayError> {
    let slot = streams
        .0
        .try_acquire_owned()
        .map_err(|_| GatewayError::Unavailable)?;
    let client = &gw.config.client;
    let every = Duration::from_millis(client.events_poll_ms);
    let heartbeat = Duration::from_secs(client.events_heartbeat_secs);
    let state = Poll {
        user_id: ctx.subject()?.to_owned(),
        gw: gw.clone(),
        ctx,
        every,
        last: [None, None],
        first: true,
        _slot: slot,
    };
    let updates = stream::unfold(state, |mut poll| async move {
        if !std::mem::take(&mut poll.first) {
            tokio::time::sleep(poll.every).await;
        }
        let events = poll.changes().await;
        Some((stream::iter(events), poll))
    })
    .flatten()
    .take_until(gw.draining());
    Ok(
        Sse::new(updates.map(Ok))
            .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat")),
    )
}

impl Poll {
    /// The events for what changed since the last poll. A part that fails this time is skipped:
    /// the stream reports state, not outages.
    async fn changes(&mut self) -> Vec<Event> {
        let fetch = || -> Result<FanOut, GatewayError> {
            let (sub, recs) = (
                self.gw.upstreams.expect("subscription")?,
                self.gw.upstreams.expect("recommendations")?,
            );
            Ok(FanOut::new()
                .part(
                    "subscription",
                    Need::Optional,
                    sub.timeout,
                    backends::current_subscription(
                        sub.clone(),
                        self.ctx.clone(),
                        self.user_id.clone(),
                    ),
                )
                .part(
                    "recommendations",
                    Need::Optional,
                    recs.timeout,
                    backends::recommendations(
                        recs.clone(),
                        self.ctx.clone(),
                        self.user_id.clone(),
                        10,
                    ),
                ))
        };
        let Ok(mut parts) = (match fetch() {
            Ok(fan) => fan.run().await,
            Err(e) => Err(e),
        }) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (kind, last) in KINDS.iter().zip(self.last.iter_mut()) {
            if let Some(now) = parts.take(kind)
                && last.as_ref() != Some(&now)
            {
                if let Ok(event) = Event::default().event(*kind).json_data(&now) {
                    out.push(event);
                }
                *last = Some(now);
            }
        }
        out
    }
}
