//! The error map's answers for overload (issue 25): busy books (no
//! database connection, or no turn at an app's admissions, within the
//! wait) are a 503 with `Retry-After` the client may act on, never a 500.

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use sharenet_ledger::StoreError;

use crate::core::accounts::{AccountsError, CommitError};
use crate::core::error::Error;
use crate::http::error::ApiError;

#[test]
fn busy_books_are_a_503_with_retry_after_never_a_500() {
    let busy = || StoreError::Busy("no database connection within 10s".into());
    for e in [
        Error::from(AccountsError::Store(busy())),
        Error::from(CommitError::Store(busy())),
        Error::from(busy()),
    ] {
        assert!(matches!(e, Error::Overloaded(_)), "{e:?}");
        let response = ApiError(e).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
    // A broken store is still the coordinator's fault.
    let broken = Error::from(StoreError::Backend("postgres: gone".into()));
    assert_eq!(
        ApiError(broken).into_response().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}
