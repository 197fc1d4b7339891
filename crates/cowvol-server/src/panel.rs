//! The snapshot panel: plain HTML, CSS and JavaScript compiled into the
//! binary. It talks to the API with the token the user logs in with; no
//! build step, nothing fetched from elsewhere.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/panel.js");
const STYLE: &str = include_str!("../assets/panel.css");

/// `/ui` and its two assets.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui") }))
        .route("/ui", get(|| async { ([(CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response() }))
        .route(
            "/ui/panel.js",
            get(|| async { ([(CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response() }),
        )
        .route("/ui/panel.css", get(|| async { ([(CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response() }))
}
