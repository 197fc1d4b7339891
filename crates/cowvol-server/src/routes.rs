//! The HTTP surface: one thin async handler per endpoint, which moves the
//! work to the blocking pool, plus the OpenAPI description generated from
//! these same handlers and types.

use crate::auth::Caller;
use crate::error::{ApiError, Failure};
use crate::extract::{JsonBody, QueryParams, RequiredJson};
use crate::ops::App;
use crate::wire::*;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};

type Ok200<T> = (StatusCode, Json<Success<T>>);
type Res<T> = Result<Ok200<T>, ApiError>;

/// Runs an engine call on the blocking pool: engine calls may sync to disk
/// or wait for I/O to drain, which must never stall the async workers.
async fn blocking<T, F>(app: &Arc<App>, status: StatusCode, f: F) -> Res<T>
where
    T: Serialize + ToSchema + Send + 'static,
    F: FnOnce(&App) -> Result<T, ApiError> + Send + 'static,
{
    let app = app.clone();
    let data = tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| ApiError::internal(format!("the engine call did not complete: {e}")))??;
    Ok((status, Json(Success { success: true, data })))
}

const OK: StatusCode = StatusCode::OK;
const CREATED: StatusCode = StatusCode::CREATED;

/// The OpenAPI description of the API; served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "cowvol platform API", description = "Volumes, snapshots, templates and policies of a cowvol store. Every answer is {\"success\": true, \"data\": ...} or {\"success\": false, \"error\": {\"code\", \"message\"}}."),
    paths(
        create_volume, list_volumes, get_volume, delete_volume, fork_volume,
        create_snapshot, list_volume_snapshots, get_snapshot, delete_snapshot,
        restore_snapshot, hold_snapshot, release_snapshot, search_snapshots,
        create_template, list_templates, get_template, delete_template,
        put_policy, get_policy, delete_policy, healthz,
    ),
    components(schemas(Failure)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let comps = api.components.get_or_insert_with(Default::default);
        comps.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Responses every authenticated endpoint may give besides its own.
#[derive(utoipa::IntoResponses)]
#[expect(dead_code, reason = "describes responses for OpenAPI; ApiError builds the real ones")]
enum CommonErrors {
    /// Malformed JSON, unknown field or bad value; `error.field` names it.
    #[response(status = 400)]
    BadRequest(Failure),
    /// No valid token.
    #[response(status = 401)]
    Unauthorized(Failure),
    /// The request did not finish within the server's request timeout.
    #[response(status = 503)]
    Timeout(Failure),
}

/// Creates a volume, empty or from a snapshot or template.
#[utoipa::path(post, path = "/api/v1/sandboxvolumes", tag = "volumes",
    request_body(content = Option<CreateVolumeRequest>, description = "Every field optional"),
    responses((status = 201, body = Success<VolumeJson>),
        (status = 404, description = "snapshot_id or template_id not found", body = Failure),
        (status = 409, description = "Name taken, the source is busy, or size_bytes differs from the source's size", body = Failure),
        (status = 413, description = "Body too large", body = Failure),
        (status = 507, description = "The store is full", body = Failure),
        CommonErrors))]
pub async fn create_volume(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    JsonBody(req): JsonBody<CreateVolumeRequest>,
) -> Res<VolumeJson> {
    blocking(&app, CREATED, move |a| a.create_volume(&c, req)).await
}

/// Lists the caller's volumes.
#[utoipa::path(get, path = "/api/v1/sandboxvolumes", tag = "volumes",
    responses((status = 200, body = Success<Vec<VolumeJson>>), CommonErrors))]
pub async fn list_volumes(State(app): State<Arc<App>>, Extension(c): Extension<Caller>) -> Res<Vec<VolumeJson>> {
    blocking(&app, OK, move |a| Ok(a.list_volumes(&c))).await
}

/// One volume.
#[utoipa::path(get, path = "/api/v1/sandboxvolumes/{id}", tag = "volumes",
    params(("id" = String, Path, description = "vol-N")),
    responses((status = 200, body = Success<VolumeJson>), (status = 404, body = Failure), CommonErrors))]
pub async fn get_volume(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Res<VolumeJson> {
    blocking(&app, OK, move |a| a.get_volume(&c, &id)).await
}

/// Deletes a volume; its snapshots stay.
#[utoipa::path(delete, path = "/api/v1/sandboxvolumes/{id}", tag = "volumes",
    params(("id" = String, Path, description = "vol-N")),
    responses((status = 200, body = Success<DeletedJson>), (status = 404, body = Failure),
        (status = 409, description = "Another operation holds the volume", body = Failure),
        (status = 504, description = "In-flight I/O did not drain; nothing was deleted", body = Failure),
        CommonErrors))]
pub async fn delete_volume(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Res<DeletedJson> {
    blocking(&app, OK, move |a| a.delete_volume(&c, &id)).await
}

/// Forks a volume (its live state, or one of its snapshots).
#[utoipa::path(post, path = "/api/v1/sandboxvolumes/{id}/fork", tag = "volumes",
    params(("id" = String, Path, description = "vol-N")),
    request_body(content = Option<ForkRequest>, description = "Every field optional"),
    responses((status = 201, body = Success<VolumeJson>), (status = 404, body = Failure),
        (status = 409, description = "Name taken, or another operation holds the source", body = Failure),
        (status = 413, description = "Body too large", body = Failure),
        (status = 507, description = "The store is full", body = Failure),
        CommonErrors))]
pub async fn fork_volume(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ForkRequest>,
) -> Res<VolumeJson> {
    blocking(&app, CREATED, move |a| a.fork_volume(&c, &id, req)).await
}

/// Takes a snapshot of a volume: O(1), durable when answered.
#[utoipa::path(post, path = "/api/v1/sandboxvolumes/{id}/snapshots", tag = "snapshots",
    params(("id" = String, Path, description = "vol-N")),
    request_body = CreateSnapshotRequest,
    responses((status = 201, body = Success<SnapshotJson>, links(("GetSnapshot" = (operation_id = "get_snapshot", parameters(("id" = "$response.body#/data/volume_id"), ("sid" = "$response.body#/data/id")))), ("DeleteSnapshot" = (operation_id = "delete_snapshot", parameters(("id" = "$response.body#/data/volume_id"), ("sid" = "$response.body#/data/id")))), ("HoldSnapshot" = (operation_id = "hold_snapshot", parameters(("id" = "$response.body#/data/volume_id"), ("sid" = "$response.body#/data/id")))), ("ReleaseSnapshot" = (operation_id = "release_snapshot", parameters(("id" = "$response.body#/data/volume_id"), ("sid" = "$response.body#/data/id")))), ("RestoreSnapshot" = (operation_id = "restore_snapshot", parameters(("id" = "$response.body#/data/volume_id"), ("sid" = "$response.body#/data/id")))))), (status = 404, body = Failure),
        (status = 409, description = "Name taken, or another operation holds the volume", body = Failure),
        (status = 413, description = "Body too large", body = Failure),
        (status = 507, description = "The store is full", body = Failure),
        CommonErrors))]
pub async fn create_snapshot(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    RequiredJson(req): RequiredJson<CreateSnapshotRequest>,
) -> Res<SnapshotJson> {
    blocking(&app, CREATED, move |a| a.create_snapshot(&c, &id, req)).await
}

/// Lists a volume's snapshots, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/sandboxvolumes/{id}/snapshots", tag = "snapshots",
    params(("id" = String, Path, description = "vol-N"), SnapshotSearch),
    responses((status = 200, body = Success<SnapshotPageJson>), (status = 404, body = Failure), CommonErrors))]
pub async fn list_volume_snapshots(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<SnapshotSearch>,
) -> Res<SnapshotPageJson> {
    blocking(&app, OK, move |a| a.list_volume_snapshots(&c, &id, q)).await
}

/// One snapshot.
#[utoipa::path(get, path = "/api/v1/sandboxvolumes/{id}/snapshots/{sid}", tag = "snapshots",
    params(("id" = String, Path, description = "vol-N"), ("sid" = String, Path, description = "snap-N")),
    responses((status = 200, body = Success<SnapshotJson>), (status = 404, body = Failure), CommonErrors))]
pub async fn get_snapshot(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path((id, sid)): Path<(String, String)>,
) -> Res<SnapshotJson> {
    blocking(&app, OK, move |a| a.get_snapshot(&c, &id, &sid)).await
}

/// Deletes a snapshot; succeeds also when it is already gone.
#[utoipa::path(delete, path = "/api/v1/sandboxvolumes/{id}/snapshots/{sid}", tag = "snapshots",
    params(("id" = String, Path, description = "vol-N"), ("sid" = String, Path, description = "snap-N")),
    responses((status = 200, body = Success<DeletedJson>),
        (status = 404, description = "The snapshot belongs to another owner", body = Failure),
        (status = 409, description = "The snapshot is held, or another operation holds the volume", body = Failure),
        CommonErrors))]
pub async fn delete_snapshot(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path((id, sid)): Path<(String, String)>,
) -> Res<DeletedJson> {
    blocking(&app, OK, move |a| a.delete_snapshot(&c, &id, &sid)).await
}

/// Rolls the volume back to the snapshot: atomic and irreversible (unless a
/// safety snapshot is asked for).
#[utoipa::path(post, path = "/api/v1/sandboxvolumes/{id}/snapshots/{sid}/restore", tag = "snapshots",
    params(("id" = String, Path, description = "vol-N"), ("sid" = String, Path, description = "snap-N")),
    request_body(content = Option<RestoreRequest>, description = "Every field optional"),
    responses((status = 200, body = Success<RestoreJson>), (status = 404, body = Failure),
        (status = 409, description = "Another operation holds the volume; nothing was applied", body = Failure),
        (status = 413, description = "Body too large", body = Failure),
        (status = 504, description = "In-flight I/O did not drain within timeout_ms; nothing was applied", body = Failure),
        (status = 507, description = "The store is full", body = Failure),
        CommonErrors))]
pub async fn restore_snapshot(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path((id, sid)): Path<(String, String)>,
    JsonBody(req): JsonBody<RestoreRequest>,
) -> Res<RestoreJson> {
    blocking(&app, OK, move |a| a.restore(&c, &id, &sid, req)).await
}

/// Holds a snapshot: deletes refuse it until it is released.
#[utoipa::path(post, path = "/api/v1/sandboxvolumes/{id}/snapshots/{sid}/hold", tag = "snapshots",
    params(("id" = String, Path, description = "vol-N"), ("sid" = String, Path, description = "snap-N")),
    responses((status = 200, body = Success<SnapshotJson>), (status = 404, body = Failure),
        (status = 409, description = "Another operation holds the volume", body = Failure), CommonErrors))]
pub async fn hold_snapshot(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path((id, sid)): Path<(String, String)>,
) -> Res<SnapshotJson> {
    blocking(&app, OK, move |a| a.set_hold(&c, &id, &sid, true)).await
}

/// Releases a snapshot's hold.
#[utoipa::path(post, path = "/api/v1/sandboxvolumes/{id}/snapshots/{sid}/release", tag = "snapshots",
    params(("id" = String, Path, description = "vol-N"), ("sid" = String, Path, description = "snap-N")),
    responses((status = 200, body = Success<SnapshotJson>), (status = 404, body = Failure),
        (status = 409, description = "Another operation holds the volume", body = Failure), CommonErrors))]
pub async fn release_snapshot(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path((id, sid)): Path<(String, String)>,
) -> Res<SnapshotJson> {
    blocking(&app, OK, move |a| a.set_hold(&c, &id, &sid, false)).await
}

/// Searches snapshots across the store, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/snapshots", tag = "snapshots", params(SnapshotSearch),
    responses((status = 200, body = Success<SnapshotPageJson>), CommonErrors))]
pub async fn search_snapshots(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    QueryParams(q): QueryParams<SnapshotSearch>,
) -> Res<SnapshotPageJson> {
    blocking(&app, OK, move |a| a.search(&c, q, None)).await
}

/// Makes a template (a read-only base image) from a ready snapshot.
#[utoipa::path(post, path = "/api/v1/templates", tag = "templates", request_body = CreateTemplateRequest,
    responses((status = 201, body = Success<TemplateJson>, links(("GetTemplate" = (operation_id = "get_template", parameters(("id" = "$response.body#/data/id")))), ("DeleteTemplate" = (operation_id = "delete_template", parameters(("id" = "$response.body#/data/id")))))), (status = 404, body = Failure),
        (status = 409, description = "Name taken", body = Failure),
        (status = 413, description = "Body too large", body = Failure),
        (status = 507, description = "The store is full", body = Failure),
        CommonErrors))]
pub async fn create_template(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    RequiredJson(req): RequiredJson<CreateTemplateRequest>,
) -> Res<TemplateJson> {
    blocking(&app, CREATED, move |a| a.create_template(&c, req)).await
}

/// Lists the caller's templates.
#[utoipa::path(get, path = "/api/v1/templates", tag = "templates",
    responses((status = 200, body = Success<Vec<TemplateJson>>), CommonErrors))]
pub async fn list_templates(State(app): State<Arc<App>>, Extension(c): Extension<Caller>) -> Res<Vec<TemplateJson>> {
    blocking(&app, OK, move |a| Ok(a.list_templates(&c))).await
}

/// One template.
#[utoipa::path(get, path = "/api/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "tmpl-N")),
    responses((status = 200, body = Success<TemplateJson>), (status = 404, body = Failure), CommonErrors))]
pub async fn get_template(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Res<TemplateJson> {
    blocking(&app, OK, move |a| a.get_template(&c, &id)).await
}

/// Deletes a template; succeeds also when it is already gone.
#[utoipa::path(delete, path = "/api/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "tmpl-N")),
    responses((status = 200, body = Success<DeletedJson>), (status = 404, description = "Another owner's template", body = Failure), CommonErrors))]
pub async fn delete_template(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Res<DeletedJson> {
    blocking(&app, OK, move |a| a.delete_template(&c, &id)).await
}

/// Sets a volume's automatic snapshot policy.
#[utoipa::path(put, path = "/api/v1/sandboxvolumes/{id}/policy", tag = "policies",
    params(("id" = String, Path, description = "vol-N")), request_body = PolicyJson,
    responses((status = 200, body = Success<PolicyStateJson>), (status = 404, body = Failure),
        (status = 409, description = "Another operation holds the volume", body = Failure),
        (status = 413, description = "Body too large", body = Failure),
        (status = 507, description = "The store is full", body = Failure),
        CommonErrors))]
pub async fn put_policy(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    RequiredJson(p): RequiredJson<PolicyJson>,
) -> Res<PolicyStateJson> {
    blocking(&app, OK, move |a| a.set_policy(&c, &id, Some(p))).await
}

/// A volume's policy; 404 when it has none (or the volume is not yours).
#[utoipa::path(get, path = "/api/v1/sandboxvolumes/{id}/policy", tag = "policies",
    params(("id" = String, Path, description = "vol-N")),
    responses((status = 200, body = Success<PolicyStateJson>),
        (status = 404, description = "No such volume, or it has no policy", body = Failure), CommonErrors))]
pub async fn get_policy(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Res<PolicyStateJson> {
    blocking(&app, OK, move |a| a.get_policy(&c, &id)).await
}

/// Removes a volume's policy; its automatic snapshots stay.
#[utoipa::path(delete, path = "/api/v1/sandboxvolumes/{id}/policy", tag = "policies",
    params(("id" = String, Path, description = "vol-N")),
    responses((status = 200, body = Success<PolicyStateJson>), (status = 404, body = Failure),
        (status = 409, description = "Another operation holds the volume", body = Failure),
        (status = 507, description = "The store is full", body = Failure),
        CommonErrors))]
pub async fn delete_policy(
    State(app): State<Arc<App>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Res<PolicyStateJson> {
    blocking(&app, OK, move |a| a.set_policy(&c, &id, None)).await
}

/// Liveness: answers while the server runs. No token needed.
#[utoipa::path(get, path = "/healthz", tag = "system", security(()),
    responses((status = 200, body = Success<HealthJson>)))]
pub async fn healthz() -> Ok200<HealthJson> {
    (OK, Json(Success { success: true, data: HealthJson { status: "ok".into() } }))
}
