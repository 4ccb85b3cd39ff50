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
        crate::directory::export_guardian,
        crate::directory::erase_guardian,
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
        crate::settings::get_sso,
        crate::settings::put_sso,
        crate::settings::delete_sso,
        crate::settings::get_retention,
        crate::settings::put_retention,
        crate::settings::purge,
        crate::log::rewind,
        crate::tokens::list_tokens,
        crate::tokens::create_token,
        crate::tokens::revoke_token,
        crate::staff::list_staff,
        crate::staff::invite,
        crate::staff::change_staff,
        crate::staff::password_reset,
        crate::staff::list_districts,
        crate::staff::create_district,
        crate::staff::change_district,
        crate::guardian::sign_in,
        crate::guardian::create_session,
        crate::guardian::end_session,
        crate::guardian::list_messages,
        crate::guardian::get_message,
        crate::guardian::acknowledge,
        crate::guardian::register_device,
        crate::guardian::web_push_key,
        crate::guardian::unregister_device,
    ),
    components(schemas(crate::error::Problem)),
    modifiers(&BearerAuth, &EveryError),
)]
pub struct ApiDoc;

/// The errors an operation can answer whatever its own logic: 400 (a malformed request
/// or query) and 500 everywhere; 401 and 403 where credentials are needed; 404 where the
/// path names something; 408, 413 and 422 where there is a body. An operation that
/// documents one itself keeps its own description.
struct EveryError;

impl Modify for EveryError {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let names_something = path.contains('{');
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let with_body = operation.request_body.is_some();
                let mut errors = vec![
                    (
                        "400",
                        "The request is malformed (`bad-request`, `invalid-query`)",
                    ),
                    ("500", "A failure on our side (`internal`)"),
                ];
                if secured {
                    errors.push(("401", "No valid credentials (`unauthorized`)"));
                    errors.push(("403", "The caller may not do this (`forbidden`)"));
                }
                if names_something {
                    errors.push(("404", "No such resource the caller may see (`not-found`)"));
                }
                if with_body {
                    errors.push(("408", "The body stopped arriving (`request-timeout`)"));
                    errors.push(("413", "The body is too large (`payload-too-large`)"));
                    errors.push(("422", "The body is not valid (`invalid-body`)"));
                }
                for (status, description) in errors {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description).into());
                }
            }
        }
    }
}

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

    /// The document is one a client generator or an API fuzzer can use: every `{name}`
    /// of a path is a declared path parameter of each of its operations, every declared
    /// path parameter is in the path, and query structs are in the query.
    #[test]
    fn path_parameters_match_the_paths_and_queries_are_queries() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut wrong = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let mut named: Vec<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|rest| rest.split('}').next())
                .collect();
            named.sort_unstable();
            for (method, operation) in item.as_object().unwrap() {
                let parameters = operation["parameters"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let mut declared: Vec<&str> = parameters
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                declared.sort_unstable();
                if declared != named {
                    wrong.push(format!("{method} {path}: path parameters {declared:?}"));
                }
                for p in parameters.iter().filter(|p| p["in"] == "path") {
                    if p["required"] != true {
                        wrong.push(format!("{method} {path}: {} not required", p["name"]));
                    }
                }
                let responses = operation["responses"].as_object().unwrap();
                for status in ["400", "500"] {
                    if !responses.contains_key(status) {
                        wrong.push(format!("{method} {path}: no {status}"));
                    }
                }
                if operation.get("security").is_some() && !responses.contains_key("401") {
                    wrong.push(format!("{method} {path}: secured without 401"));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// A validator that knows OpenAPI 3.1 (`openapi-spec-validator`, installed by
    /// `scripts/test-services`) accepts the document.
    #[test]
    fn an_openapi_validator_accepts_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("openapi.json");
        std::fs::write(&file, serde_json::to_vec(&ApiDoc::openapi()).unwrap()).unwrap();
        let python = tidings_core::testing::test_tool("python");
        let output = std::process::Command::new(&python)
            .args(["-m", "openapi_spec_validator"])
            .arg(&file)
            .output()
            .unwrap();
        let said =
            String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{said}");
        assert!(said.contains("OK"), "{said}");
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
