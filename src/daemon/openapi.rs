//! The daemon API's OpenAPI document, served at `/v1/openapi.json`. It is
//! generated from the handlers' `#[utoipa::path]` attributes and the
//! request and response types themselves, so it cannot drift from them.

use utoipa::OpenApi;

use super::{api, archive, images, networks, state, volumes};

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
        volumes::create,
        volumes::list,
        volumes::inspect,
        volumes::remove,
        volumes::resize,
        volumes::prune,
        archive::head,
        archive::get,
        archive::put,
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
        crate::client::types::Mount,
        crate::client::types::MountKind,
        crate::client::types::VolumeView,
        crate::client::types::VolumeCreateRequest,
        crate::client::types::VolumeResizeRequest,
        crate::client::types::VolumePruneReport,
    ))
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
