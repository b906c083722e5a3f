//! Sealed secrets: values encrypted with per-user data keys, wrapped by a
//! master key.
