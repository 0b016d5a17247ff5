//! The daemon API's OpenAPI document, served at `/v1/openapi.json`. It is
//! generated from the handlers' `#[utoipa::path]` attributes and the
//! request and response types themselves, so it cannot drift from them.

use utoipa::OpenApi;

use super::{api, images, networks, state};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "husk daemon API",
        description = "Containers, each in its own microVM, behind `husk serve`. Errors are \
                       `{code, message}`; streams are NDJSON."
    ),
    paths(
        api::create,
        api::list,
        api::inspect,
        api::start,
        api::wait,
        api::kill,
        api::stop,
        api::remove,
        api::logs_of,
        api::exec,
        super::attach::attach,
        api::info,
        api::events,
        images::list,
        images::pull,
        images::import,
        images::remove,
        networks::create,
        networks::list,
        networks::inspect,
        networks::remove,
    ),
    components(schemas(
        state::CreateRequest,
        state::ContainerView,
        state::ContainerState,
        crate::client::types::PortBinding,
        crate::client::types::NetworkSettings,
        crate::client::types::NetworkView,
        crate::client::types::NetworkMember,
        crate::client::types::NetworkCreateRequest,
        crate::client::types::Protocol,
    ))
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
