//! The content service over GraphQL (`POST /graphql`): the same catalogue as the REST API, with
//! what GraphQL is for: a client asks for an item and its related items, with only the fields it
//! wants, in one round trip. Only public fields are in the schema.
//!
//! ```graphql
//! type Query {
//!   item(id: ID!): Item
//!   items(ids: [ID!]!): [Item!]!
//! }
//! type Item {
//!   id: ID!  title: String!  description: String!  genre: String!  year: Int!
//!   durationMin: Int!  rating: Float!  imageUrl: String!
//!   related(limit: Int = 5): [Item!]!
//! }
//! ```

use std::sync::LazyLock;

use async_graphql::{Context, EmptyMutation, EmptySubscription, ID, Object, Schema};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};

use crate::data;
use crate::rest::{ApiError, AppState};

/// Most ids one `items` query may ask for.
const MAX_IDS: usize = 100;

struct Query;

#[Object]
impl Query {
    /// One item, or null when the id is unknown.
    async fn item(&self, ctx: &Context<'_>, id: ID) -> Option<Item> {
        let state = ctx.data_unchecked::<AppState>();
        state.catalogue.item(&id).map(|i| Item(i.clone()))
    }

    /// The known items among `ids`, in that order.
    async fn items(&self, ctx: &Context<'_>, ids: Vec<ID>) -> async_graphql::Result<Vec<Item>> {
        if ids.len() > MAX_IDS {
            return Err(format!("at most {MAX_IDS} ids").into());
        }
        let state = ctx.data_unchecked::<AppState>();
        Ok(ids
            .iter()
            .filter_map(|id| state.catalogue.item(id))
            .map(|i| Item(i.clone()))
            .collect())
    }
}

struct Item(data::Item);

#[Object]
impl Item {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn title(&self) -> &str {
        &self.0.title
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    async fn genre(&self) -> &str {
        self.0.genre
    }
    async fn year(&self) -> u16 {
        self.0.year
    }
    async fn duration_min(&self) -> u16 {
        self.0.duration_min
    }
    async fn rating(&self) -> f64 {
        self.0.rating
    }
    async fn image_url(&self) -> &str {
        &self.0.image_url
    }
    /// Items related to this one, at most `limit` (1 to 20).
    async fn related(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 5)] limit: usize,
    ) -> async_graphql::Result<Vec<Item>> {
        if !(1..=20).contains(&limit) {
            return Err("limit must be between 1 and 20".into());
        }
        let state = ctx.data_unchecked::<AppState>();
        Ok(self
            .0
            .related
            .iter()
            .filter_map(|id| state.catalogue.item(id))
            .take(limit)
            .map(|i| Item(i.clone()))
            .collect())
    }
}

type ContentSchema = Schema<Query, EmptyMutation, EmptySubscription>;

/// Built once; each request brings the state as its data. Depth and complexity are bounded, so
/// a query cannot fan out without limit through `related`.
static SCHEMA: LazyLock<ContentSchema> = LazyLock::new(|| {
    Schema::build(Query, EmptyMutation, EmptySubscription)
        .limit_depth(6)
        .limit_complexity(500)
        .finish()
});

/// `POST /graphql` with `{"query", "variables"?, "operationName"?}`.
pub(crate) async fn graphql(
    State(state): State<AppState>,
    request: Result<Json<async_graphql::Request>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = request?;
    let response = SCHEMA.execute(request.data(state)).await;
    Ok(Json(response).into_response())
}
