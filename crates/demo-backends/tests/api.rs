//! End-to-end tests: real servers on ephemeral ports, called through the
//! generated gRPC clients and a plain HTTP client.

use std::time::{Duration, Instant};

use demo_backends::DemoBackends;
use demo_backends::proto::preferences::{
    GetPreferencesRequest, preferences_service_client::PreferencesServiceClient,
};
use demo_backends::proto::subscription::{
    CreateSubscriptionRequest, GetSubscriptionRequest, ListSubscriptionsRequest,
    subscription_service_client::SubscriptionServiceClient,
};
use demo_backends::proto::user::{GetUserRequest, user_service_client::UserServiceClient};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One running instance; every test gets its own, so faults and counters
/// never leak between tests.
struct Backends {
    channel: Channel,
    rest: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Backends {
    async fn start() -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let rest = TcpListener::bind("127.0.0.1:0").await.expect("bind REST");
        let grpc_addr = grpc.local_addr().expect("gRPC address");
        let rest_addr = rest.local_addr().expect("REST address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(DemoBackends::new().serve(grpc, rest, async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{grpc_addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect gRPC");
        Self {
            channel,
            rest: format!("http://{rest_addr}"),
            http: reqwest::Client::new(),
            stop: Some(stop),
            task,
        }
    }

    fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel.clone())
    }

    fn subscriptions(&self) -> SubscriptionServiceClient<Channel> {
        SubscriptionServiceClient::new(self.channel.clone())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.rest))
            .send()
            .await
            .expect("GET");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.rest);
        let response = self.http.post(url).json(&body).send().await.expect("POST");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    async fn set_fault(&self, fault: Value) {
        let (status, body) = self.post("/admin/faults", fault).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    async fn hits(&self) -> Value {
        self.get("/admin/hits").await.1
    }

    async fn get_user(&self, user_id: &str) -> Result<demo_backends::proto::user::User, Code> {
        let request = GetUserRequest {
            user_id: user_id.into(),
        };
        self.users()
            .get_user(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| status.code())
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        drop(self.channel);
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("servers drain promptly")
            .expect("server task");
        result.expect("servers stop cleanly");
    }
}

/// The error code of a failed call, `None` for success.
fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    result.err().map(|status| status.code())
}

#[tokio::test]
async fn users_and_preferences_are_seeded_deterministically() {
    let (a, b) = (Backends::start().await, Backends::start().await);
    let user = a.get_user("user-0042").await.expect("seeded user");
    assert_eq!(user.id, "user-0042");
    assert!(!user.display_name.is_empty());
    assert!(user.password_hash.contains("INTERNAL"));
    assert_eq!(b.get_user("user-0042").await, Ok(user));

    assert_eq!(a.get_user("user-1001").await, Err(Code::NotFound));
    assert_eq!(a.get_user("nobody").await, Err(Code::NotFound));
    assert_eq!(a.get_user("").await, Err(Code::InvalidArgument));

    let mut preferences = PreferencesServiceClient::new(a.channel.clone());
    let request = |id: &str| GetPreferencesRequest { user_id: id.into() };
    let prefs = preferences
        .get_preferences(request("user-0042"))
        .await
        .expect("prefs");
    let prefs = prefs.into_inner();
    assert_eq!(prefs.user_id, "user-0042");
    assert!((1..=3).contains(&prefs.favourite_genres.len()));
    let missing = preferences.get_preferences(request("user-0000")).await;
    assert_eq!(code(missing), Some(Code::NotFound));

    for path in [
        "/content/items?limit=100",
        "/ads?user_id=user-0001",
        "/recommendations/user-0001",
    ] {
        assert_eq!(a.get(path).await, b.get(path).await, "{path}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn subscriptions_can_be_read_created_and_paged() {
    let backends = Backends::start().await;
    let mut client = backends.subscriptions();
    let get = |id: &str, user_id: &str| GetSubscriptionRequest {
        id: id.into(),
        user_id: user_id.into(),
    };

    let seeded = client
        .get_subscription(get("sub-u0001", ""))
        .await
        .expect("seeded");
    let seeded = seeded.into_inner();
    assert_eq!(
        (seeded.user_id.as_str(), seeded.partner_id.as_str()),
        ("user-0001", "")
    );
    let current = client
        .get_subscription(get("", "user-0001"))
        .await
        .expect("current");
    assert_eq!(current.into_inner(), seeded);
    assert_eq!(
        code(client.get_subscription(get("", "")).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(client.get_subscription(get("", "user-9999")).await),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(client.get_subscription(get("sub-u0001", "user-0002")).await),
        Some(Code::NotFound)
    );

    let create = |user_id: &str, plan: &str| CreateSubscriptionRequest {
        user_id: user_id.into(),
        plan: plan.into(),
        partner_id: "partner-a".into(),
    };
    for _ in 0..5 {
        client
            .create_subscription(create("user-0003", "premium"))
            .await
            .expect("create");
    }
    let latest = client
        .get_subscription(get("", "user-0003"))
        .await
        .expect("current");
    let latest = latest.into_inner();
    assert_eq!(
        (latest.id.as_str(), latest.status.as_str()),
        ("sub-5", "active")
    );
    assert_eq!(
        (latest.plan.as_str(), latest.partner_id.as_str()),
        ("premium", "partner-a")
    );
    assert_eq!(
        code(
            client
                .create_subscription(create("user-0003", "gold"))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(
            client
                .create_subscription(create("user-5555", "basic"))
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(client.create_subscription(create("", "basic")).await),
        Some(Code::InvalidArgument)
    );

    let list = |page_size: u32, page_token: &str| ListSubscriptionsRequest {
        partner_id: "partner-a".into(),
        user_id: String::new(),
        page_size,
        page_token: page_token.into(),
    };
    let mut ids = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_subscriptions(list(2, &token))
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        ids.extend(page.subscriptions.into_iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(ids, ["sub-1", "sub-2", "sub-3", "sub-4", "sub-5"]);
    assert_eq!(
        code(client.list_subscriptions(list(2, "not-a-token")).await),
        Some(Code::InvalidArgument)
    );

    let everything = ListSubscriptionsRequest::default();
    let page = client
        .list_subscriptions(everything)
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.subscriptions.len(), 20, "default page size");
    let by_user = ListSubscriptionsRequest {
        user_id: "user-0003".into(),
        page_size: 1_000,
        ..Default::default()
    };
    let page = client
        .list_subscriptions(by_user)
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.subscriptions.len(), 6, "seeded plus five created");
    assert!(page.next_page_token.is_empty());
    backends.stop().await;
}

#[tokio::test]
async fn content_api_pages_batches_and_lists() {
    let backends = Backends::start().await;
    let (status, page) = backends.get("/content/items?limit=5&offset=10").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 500);
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["id"], "item-011");
    assert_eq!(
        items[0]["image_url"],
        "https://img.demo.invalid/items/item-011"
    );
    for field in [
        "title",
        "description",
        "genre",
        "year",
        "duration_min",
        "rating",
        "related",
        "internal_cost_cents",
    ] {
        assert!(!items[0][field].is_null(), "missing {field}");
    }

    let (_, page) = backends.get("/content/items?limit=1000").await;
    assert_eq!(
        page["items"].as_array().map(Vec::len),
        Some(100),
        "limit is capped"
    );
    let (_, page) = backends.get("/content/items").await;
    assert_eq!(
        page["items"].as_array().map(Vec::len),
        Some(20),
        "default limit"
    );

    let (status, batch) = backends
        .get("/content/items?ids=item-002,item-999,item-001")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        batch,
        json!({ "items": [page["items"][1], page["items"][0]] })
    );
    let too_many = vec!["item-001"; 101].join(",");
    let (status, _) = backends
        .get(&format!("/content/items?ids={too_many}"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, item) = backends.get("/content/items/item-001").await;
    assert_eq!((status, &item), (StatusCode::OK, &page["items"][0]));
    let (status, error) = backends.get("/content/items/item-501").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error["error"].is_string());
    let (status, error) = backends.get("/content/items?limit=many").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"].is_string());

    for name in ["featured", "trending", "new-releases"] {
        let (status, list) = backends.get(&format!("/content/lists/{name}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["list"], name);
        assert_eq!(list["items"].as_array().map(Vec::len), Some(12));
    }
    assert_eq!(
        backends.get("/content/lists/unknown").await.0,
        StatusCode::NOT_FOUND
    );
    backends.stop().await;
}

#[tokio::test]
async fn ads_and_recommendations_are_personalised() {
    let backends = Backends::start().await;
    let (status, ads) = backends.get("/ads?user_id=user-0001&placement=feed").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ads["ads"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        backends
            .get("/ads?user_id=user-0001&placement=feed")
            .await
            .1,
        ads
    );
    assert_ne!(
        backends
            .get("/ads?user_id=user-0002&placement=feed")
            .await
            .1,
        ads
    );
    let (_, many) = backends.get("/ads?user_id=user-0001&limit=50").await;
    assert_eq!(many["ads"].as_array().map(Vec::len), Some(10));
    assert_eq!(
        backends.get("/ads?placement=a%20b").await.0,
        StatusCode::BAD_REQUEST
    );

    let (status, recs) = backends.get("/recommendations/user-0001").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(recs["user_id"], "user-0001");
    assert_eq!(recs["items"].as_array().map(Vec::len), Some(10));
    assert!(recs["items"][0]["score"].is_f64() && recs["items"][0]["reason"].is_string());
    assert_ne!(
        backends.get("/recommendations/user-0002").await.1["items"],
        recs["items"]
    );
    let (_, many) = backends.get("/recommendations/user-0001?limit=500").await;
    assert_eq!(many["items"].as_array().map(Vec::len), Some(50));
    assert_eq!(
        backends.get("/recommendations/user-9999").await.0,
        StatusCode::NOT_FOUND
    );
    backends.stop().await;
}

#[tokio::test]
async fn faults_add_latency_and_errors_until_reset() {
    let backends = Backends::start().await;
    backends
        .set_fault(json!({ "service": "content", "latency_ms": 300 }))
        .await;
    backends
        .set_fault(json!({ "service": "user", "error_rate": 1.0 }))
        .await;
    backends
        .set_fault(json!({ "service": "ads", "error_rate": 1 }))
        .await;
    let (_, table) = backends.get("/admin/faults").await;
    assert_eq!(
        table["content"],
        json!({ "latency_ms": 300, "error_rate": 0.0 })
    );
    assert_eq!(table["user"], json!({ "latency_ms": 0, "error_rate": 1.0 }));

    let started = Instant::now();
    assert_eq!(
        backends.get("/content/items/item-001").await.0,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(backends.get_user("user-0001").await, Err(Code::Unavailable));
        let (status, body) = backends.get("/ads").await;
        assert_eq!(
            (status, body),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "injected fault" })
            )
        );
    }
    // Admin and health endpoints are never faulted.
    assert_eq!(
        backends
            .http
            .get(format!("{}/healthz", backends.rest))
            .send()
            .await
            .expect("healthz")
            .status(),
        StatusCode::OK
    );

    let (status, table) = backends.post("/admin/reset", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(table["user"], json!({ "latency_ms": 0, "error_rate": 0.0 }));
    assert!(backends.get_user("user-0001").await.is_ok());
    assert_eq!(backends.get("/ads").await.0, StatusCode::OK);
    backends.stop().await;
}

/// Calls multiplexed on one HTTP/2 connection, as a gateway's channel sends them, each last the
/// injected latency and no more. Without `TCP_NODELAY` on the server's sockets, a call whose
/// answer is written while an earlier one's is unacknowledged waits for the client's delayed
/// acknowledgement (40 ms or more on Linux), so concurrent calls took the latency plus that.
#[tokio::test]
async fn concurrent_calls_on_one_connection_wait_only_their_latency() {
    const LATENCY: Duration = Duration::from_millis(100);
    const STALL: Duration = Duration::from_millis(40);
    let backends = Backends::start().await;
    backends
        .set_fault(json!({ "service": "user", "latency_ms": LATENCY.as_millis() }))
        .await;
    // The best of three rounds, so that a slow moment of a busy machine does not decide it.
    let users: Vec<String> = (1..=4).map(|n| format!("user-000{n}")).collect();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let calls = users.iter().map(|user| backends.get_user(user));
        for result in futures::future::join_all(calls).await {
            assert!(result.is_ok(), "{result:?}");
        }
        best = best.min(started.elapsed());
    }
    assert!(best >= LATENCY, "{best:?}");
    assert!(
        best < LATENCY + STALL,
        "four concurrent calls took {best:?} at best, for {LATENCY:?} of injected latency"
    );
    backends.stop().await;
}

#[tokio::test]
async fn admin_rejects_invalid_faults_naming_the_field() {
    let backends = Backends::start().await;
    let cases = [
        (json!({ "service": "billing" }), "service"),
        (json!({ "service": "subscription_create" }), "service"),
        (json!({ "latency_ms": 5 }), "service"),
        (json!({ "service": "user", "latency_ms": -1 }), "latency_ms"),
        (
            json!({ "service": "user", "latency_ms": 60_001 }),
            "latency_ms",
        ),
        (
            json!({ "service": "user", "latency_ms": "slow" }),
            "latency_ms",
        ),
        (
            json!({ "service": "user", "error_rate": 1.5 }),
            "error_rate",
        ),
        (
            json!({ "service": "user", "error_rate": -0.1 }),
            "error_rate",
        ),
        (json!({ "service": "user", "eror_rate": 0.5 }), "eror_rate"),
    ];
    for (body, field) in cases {
        let (status, error) = backends.post("/admin/faults", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = error["error"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {message}");
    }
    let (_, table) = backends.get("/admin/faults").await;
    assert_eq!(
        table["user"],
        json!({ "latency_ms": 0, "error_rate": 0.0 }),
        "nothing was applied"
    );
    backends.stop().await;
}

#[tokio::test]
async fn hits_count_every_call_per_service() {
    let backends = Backends::start().await;
    let before = backends.hits().await;
    assert_eq!(
        before,
        json!({
            "user": 0, "preferences": 0, "subscription": 0, "content": 0,
            "ads": 0, "recommendations": 0, "subscription_create": 0
        })
    );

    let _ = backends.get_user("user-0001").await;
    let _ = backends.get_user("user-9999").await;
    let mut subscriptions = backends.subscriptions();
    let create = CreateSubscriptionRequest {
        user_id: "user-0001".into(),
        plan: "basic".into(),
        partner_id: String::new(),
    };
    subscriptions
        .create_subscription(create)
        .await
        .expect("create");
    let get = GetSubscriptionRequest {
        id: "sub-1".into(),
        user_id: String::new(),
    };
    subscriptions.get_subscription(get).await.expect("get");
    backends.get("/content/items/item-001").await;
    backends.get("/content/items/item-999").await;
    backends.get("/recommendations/user-0001").await;
    backends.get("/admin/faults").await;

    let after = backends.hits().await;
    assert_eq!(
        after,
        json!({
            "user": 2, "preferences": 0, "subscription": 2, "content": 2,
            "ads": 0, "recommendations": 1, "subscription_create": 1
        })
    );
    backends.post("/admin/reset", json!({})).await;
    assert_eq!(backends.hits().await, after, "reset keeps counters");
    backends.stop().await;
}

#[tokio::test]
async fn last_traceparent_is_recorded_per_service() {
    let backends = Backends::start().await;
    let (_, last) = backends.get("/admin/last-traceparent").await;
    assert!(last["user"].is_null() && last["content"].is_null());

    let mut request = Request::new(GetUserRequest {
        user_id: "user-0001".into(),
    });
    request
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().expect("metadata"));
    request
        .metadata_mut()
        .insert("x-user-id", "user-0001".parse().expect("metadata"));
    backends.users().get_user(request).await.expect("user");

    let content_trace = TRACEPARENT.replace("-01", "-00");
    let response = backends
        .http
        .get(format!("{}/content/lists/featured", backends.rest))
        .header("traceparent", &content_trace)
        .header("x-user-id", "user-0001")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);

    let (_, last) = backends.get("/admin/last-traceparent").await;
    assert_eq!(last["user"], TRACEPARENT);
    assert_eq!(last["content"], content_trace.as_str());
    assert!(last["preferences"].is_null() && last["ads"].is_null());
    backends.stop().await;
}

#[cfg(unix)]
#[test]
fn binary_exits_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_demo-backends"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--rest-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn binary");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("listening"));
    assert!(listening, "binary never reported listening");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(killed.expect("run kill").success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll binary") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("binary did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}
