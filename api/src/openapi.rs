//! The OpenAPI document served at `/api/v1/openapi.json`, generated from the handlers'
//! annotations so that it cannot drift from the routes.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Tidings", description = "School-to-guardian notifications. Errors are RFC 9457 problem+json."),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::auth::me,
        crate::directory::list_schools,
        crate::directory::list_classes,
        crate::directory::list_students,
        crate::directory::list_guardians,
        crate::directory::get_guardian,
        crate::directory::get_school,
        crate::directory::get_class,
        crate::directory::get_student,
        crate::directory::add_contact_point,
        crate::directory::change_contact_point,
        crate::directory::add_opt_out,
        crate::directory::revoke_opt_out,
        crate::imports::import_oneroster,
        crate::imports::get_import,
        crate::messages::send_message,
        crate::messages::get_message,
        crate::messages::list_messages,
        crate::messages::list_recipients,
        crate::messages::cancel_message,
        crate::messages::renotify,
        crate::deliveries::get_delivery,
        crate::deliveries::list_dead_letters,
        crate::deliveries::replay_dead_letter,
        crate::replies::list_replies,
        crate::guardian::sign_in,
        crate::guardian::create_session,
        crate::guardian::end_session,
        crate::guardian::list_messages,
        crate::guardian::get_message,
        crate::guardian::acknowledge,
        crate::guardian::register_device,
        crate::guardian::unregister_device,
    ),
    components(schemas(crate::error::Problem)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
