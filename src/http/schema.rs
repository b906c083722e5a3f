//! Schemas the derive cannot write by itself, for types that live in crates
//! without OpenAPI support (the aggregates' enums, role names).

use utoipa::openapi::schema::{Array, ArrayBuilder, Object, ObjectBuilder, Type};

/// A string that is one of `values`.
pub fn string_enum(values: &[&str]) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

/// A new password: 8 to 128 characters, and not one of the common
/// passwords the server refuses (compared case-insensitively; the pattern
/// spells each letter in both cases, as JSON Schema patterns have no flags).
pub fn new_password() -> Object {
    use chronicle_aggregates::validation::{
        COMMON_PASSWORDS, PASSWORD_MAX_CHARS, PASSWORD_MIN_CHARS,
    };
    let either_case = |word: &str| -> String {
        word.chars()
            .map(|c| {
                let (lower, upper) = (c.to_ascii_lowercase(), c.to_ascii_uppercase());
                if lower == upper {
                    regex_escape(c)
                } else {
                    format!("[{lower}{upper}]")
                }
            })
            .collect()
    };
    let refused: Vec<String> = COMMON_PASSWORDS.iter().map(|w| either_case(w)).collect();
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(PASSWORD_MIN_CHARS))
        .max_length(Some(PASSWORD_MAX_CHARS))
        .pattern(Some(format!("^(?!(?:{})$)", refused.join("|"))))
        .description(Some(
            "8–128 characters, not one of the most common passwords",
        ))
        .build()
}

fn regex_escape(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else {
        format!("\\{c}")
    }
}

/// An array of role names, each one of the roles the server knows.
pub fn known_roles() -> Array {
    ArrayBuilder::new()
        .items(string_enum(&chronicle_aggregates::user::KNOWN_ROLES))
        .build()
}
