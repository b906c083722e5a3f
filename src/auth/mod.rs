//! Authentication: signing keys, access tokens and password storage.

pub mod cache;
pub mod keys;
pub mod passwords;
pub mod refresh_tokens;
pub mod tokens;

pub use cache::AuthCache;
pub use keys::SigningKeys;
pub use passwords::PasswordService;
pub use tokens::{AccessClaims, TokenIssuer};
