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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every `$ref` in `value`.
    fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    found.push(target);
                }
                map.values().for_each(|v| refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }

    /// A successful JSON answer is described by a schema a client can be generated from:
    /// a named component, or an array of one — never a bare object.
    #[test]
    fn every_json_answer_has_a_typed_schema_and_every_reference_resolves() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let components = &doc["components"]["schemas"];
        let mut untyped = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    let Some(schema) = response["content"]["application/json"].get("schema") else {
                        continue;
                    };
                    let named = |s: &Value| s.get("$ref").is_some();
                    let typed = named(schema) || schema.get("items").is_some_and(named);
                    if status.starts_with('2') && !typed {
                        untyped.push(format!("{method} {path} {status}: {schema}"));
                    }
                }
            }
        }
        assert!(
            untyped.is_empty(),
            "untyped answers:\n{}",
            untyped.join("\n")
        );
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 30, "{} references", found.len());
        for target in found {
            let name = target.trim_start_matches("#/components/schemas/");
            assert!(
                components.get(name).is_some(),
                "{target} is referenced but not in the document"
            );
        }
        // Ids are UUIDs and states their stored names.
        let delivery = &components["Delivery"]["properties"];
        assert_eq!(delivery["id"]["$ref"], "#/components/schemas/DeliveryId");
        assert_eq!(components["DeliveryId"]["format"], "uuid");
        let states = &components["DeliveryState"]["enum"];
        assert!(
            states.as_array().unwrap().contains(&"SUPPRESSED".into()),
            "{states}"
        );
    }
}
