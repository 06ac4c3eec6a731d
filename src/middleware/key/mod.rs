//! Where [`LockLayer`](super::LockLayer) finds a request's lock key.
//!
//! A [`KeyExtractor`] looks at the request head and returns the key, or a
//! [`KeyError`]: this request has no key ([`KeyError::Missing`], refused
//! with `400` unless the layer lets such requests pass, see
//! [`MissingKey`](super::MissingKey)), its key is not usable
//! ([`KeyError::Invalid`], `400`), or the extractor cannot work where the
//! layer is installed ([`KeyError::Misplaced`], always `500`). Closures
//! `Fn(&Parts) -> Option<String>` are extractors (`None` is a missing key);
//! [`from_fn`] helps the compiler infer their argument type. Ready ones:
//!
//! - [`header`]: the value of a request header (per-tenant locks);
//!   [`header_as`] parses it and locks its canonical form.
//! - `path_param` (feature `axum`): a parameter of the matched axum route;
//!   `path_param_as::<T>` parses it and locks its canonical form;
//!   `path_params` locks several at once (a transfer's two accounts).
//! - [`from_fn_all`]: a closure that finds several keys.
//! - `method_and_path` (feature `axum`): the method and the route
//!   template, one lock per endpoint.
//!
//! Any extractor can put a namespace in front of its keys with
//! [`KeyExtractor::prefixed`], so that `tenant:7` and `account:7` differ.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tower_lock::{LockLayer, Locker, middleware::key};
//!
//! let locker = Locker::in_memory();
//! let by_tenant = LockLayer::new(locker.clone(), key::header("x-tenant-id").prefixed("tenant:"));
//! let by_first_segment = LockLayer::new(
//!     locker,
//!     key::from_fn(|parts| parts.uri.path().split('/').nth(1).map(str::to_owned)),
//! );
//! ```

mod canonical;
mod error;
mod extractor;
mod from_fn;
mod header;
mod keys;
#[cfg(feature = "axum")]
mod path;
#[cfg(feature = "axum")]
mod route;

pub use self::{
    error::KeyError,
    extractor::{KeyExtractor, Prefixed},
    from_fn::{FromFnAll, from_fn, from_fn_all},
    header::{Header, HeaderAs, header, header_as},
    keys::Keys,
};
#[cfg(feature = "axum")]
pub use self::{
    path::{PathParam, PathParamAs, PathParams, path_param, path_param_as, path_params},
    route::{MethodAndPath, method_and_path},
};
