//! What the crate's tests share.

/// Serves `app` on a free port of 127.0.0.1, with the peer's address for `ConnectInfo`, for as
/// long as the test's runtime runs; its base URL (`http://127.0.0.1:PORT`).
pub(crate) async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    url
}
