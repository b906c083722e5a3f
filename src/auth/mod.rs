//! Authentication: signing keys, access tokens and password storage.

pub mod keys;
pub mod passwords;
pub mod refresh_tokens;
pub mod tokens;

pub use keys::SigningKeys;
pub use passwords::PasswordService;
pub use tokens::{AccessClaims, TokenIssuer};
