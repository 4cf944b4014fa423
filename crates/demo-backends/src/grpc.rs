//! The tonic services: user, preferences and subscription.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::Shared;
use crate::control::{CallContext, InjectedFault, Service};
use crate::data::PLANS;
use crate::proto::preferences::{
    GetPreferencesRequest, Preferences, preferences_service_server::PreferencesService,
};
use crate::proto::subscription::{
    CancelSubscriptionRequest, CreateSubscriptionRequest, GetSubscriptionRequest,
    ListSubscriptionsRequest, ListSubscriptionsResponse, Subscription,
    subscription_service_server::SubscriptionService,
};
use crate::proto::user::{GetUserRequest, User, user_service_server::UserService};
use crate::subscriptions::StoreFull;

const DEFAULT_PAGE_SIZE: usize = 20;
const MAX_PAGE_SIZE: usize = 100;

/// Implements every gRPC service over the shared state.
#[derive(Debug, Clone)]
pub(crate) struct Grpc(pub(crate) Arc<Shared>);

impl From<InjectedFault> for Status {
    fn from(_: InjectedFault) -> Self {
        Status::unavailable("injected fault")
    }
}

impl From<StoreFull> for Status {
    fn from(_: StoreFull) -> Self {
        Status::resource_exhausted("subscription store is full")
    }
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

fn user_not_found(user_id: &str) -> Status {
    Status::not_found(format!("user {user_id} not found"))
}

impl Grpc {
    async fn admit<T>(&self, service: Service, request: &Request<T>) -> Result<(), Status> {
        let call = CallContext::from_grpc(request.metadata());
        Ok(self.0.control.admit(service, call).await?)
    }

    /// Rejects user ids that are not seeded users.
    fn known_user(&self, user_id: &str) -> Result<(), Status> {
        match self.0.catalogue.user(user_id) {
            Some(_) => Ok(()),
            None => Err(user_not_found(user_id)),
        }
    }
}

#[tonic::async_trait]
impl UserService for Grpc {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        self.admit(Service::User, &request).await?;
        let user_id = required("user_id", &request.get_ref().user_id)?;
        let user = self
            .0
            .catalogue
            .user(user_id)
            .ok_or_else(|| user_not_found(user_id))?;
        Ok(Response::new(user.clone()))
    }
}

#[tonic::async_trait]
impl PreferencesService for Grpc {
    async fn get_preferences(
        &self,
        request: Request<GetPreferencesRequest>,
    ) -> Result<Response<Preferences>, Status> {
        self.admit(Service::Preferences, &request).await?;
        let user_id = required("user_id", &request.get_ref().user_id)?;
        let preferences = self
            .0
            .catalogue
            .preferences(user_id)
            .ok_or_else(|| user_not_found(user_id))?;
        Ok(Response::new(preferences.clone()))
    }
}

#[tonic::async_trait]
impl SubscriptionService for Grpc {
    /// By `id` when set (and then `user_id`, if also set, must own it), else
    /// the `user_id`'s current subscription.
    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        self.admit(Service::Subscription, &request).await?;
        let GetSubscriptionRequest { id, user_id } = request.get_ref();
        let store = &self.0.subscriptions;
        let subscription = match (id.is_empty(), user_id.is_empty()) {
            (true, true) => return Err(Status::invalid_argument("id or user_id is required")),
            (false, _) => store
                .get(id)
                .filter(|s| user_id.is_empty() || s.user_id == *user_id)
                .ok_or_else(|| Status::not_found(format!("subscription {id} not found")))?,
            (true, false) => store
                .current_for_user(user_id)
                .ok_or_else(|| user_not_found(user_id))?,
        };
        Ok(Response::new(subscription))
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        self.admit(Service::Subscription, &request).await?;
        let ListSubscriptionsRequest {
            partner_id,
            user_id,
            page_size,
            page_token,
        } = request.get_ref();
        if !user_id.is_empty() {
            self.known_user(user_id)?;
        }
        let start = if page_token.is_empty() {
            0
        } else {
            page_token
                .parse()
                .map_err(|_| Status::invalid_argument("invalid page_token"))?
        };
        let page_size = match *page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let (subscriptions, next) = self.0.subscriptions.page(start, page_size, |s| {
            (partner_id.is_empty() || s.partner_id == *partner_id)
                && (user_id.is_empty() || s.user_id == *user_id)
        });
        Ok(Response::new(ListSubscriptionsResponse {
            subscriptions,
            next_page_token: next.map(|p| p.to_string()).unwrap_or_default(),
        }))
    }

    async fn cancel_subscription(
        &self,
        request: Request<CancelSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        self.admit(Service::Subscription, &request).await?;
        let CancelSubscriptionRequest { id, partner_id } = request.get_ref();
        self.0
            .subscriptions
            .cancel(id, partner_id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("subscription {id} not found")))
    }

    async fn create_subscription(
        &self,
        request: Request<CreateSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        self.0.control.count_subscription_create();
        self.admit(Service::Subscription, &request).await?;
        let CreateSubscriptionRequest {
            user_id,
            plan,
            partner_id,
        } = request.get_ref();
        let user_id = required("user_id", user_id)?;
        if !PLANS.contains(&plan.as_str()) {
            return Err(Status::invalid_argument(format!(
                "plan must be one of {}",
                PLANS.join(", ")
            )));
        }
        self.known_user(user_id)?;
        let subscription = self.0.subscriptions.create(user_id, plan, partner_id)?;
        tracing::debug!(id = %subscription.id, user_id, partner_id, "subscription created");
        Ok(Response::new(subscription))
    }
}
