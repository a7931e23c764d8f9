//! Paging of list endpoints: `?offset=N&size=M` in, `{"total", "items", "next"}` out,
//! as the incumbent's REST API pages.

use axum::http::{HeaderMap, header};

use crate::error::ApiError;

/// Default and largest page size of list endpoints.
pub const DEFAULT_PAGE_SIZE: u64 = 100;
pub const MAX_PAGE_SIZE: u64 = 1000;

/// Parses the `size`/`offset` query values shared by every list.
pub fn page(offset: Option<&str>, size: Option<&str>) -> Result<(u64, u64), ApiError> {
    let parse = |name: &str, v: Option<&str>, d: u64| -> Result<u64, ApiError> {
        v.map_or(Ok(d), |x| {
            x.parse::<u64>().map_err(|_| ApiError::field(name, format!("must be a non-negative integer, got {x:?}")))
        })
    };
    let size = parse("size", size, DEFAULT_PAGE_SIZE)?;
    if size == 0 || size > MAX_PAGE_SIZE {
        return Err(ApiError::field("size", format!("must be between 1 and {MAX_PAGE_SIZE}")));
    }
    Ok((parse("offset", offset, 0)?, size))
}

/// The `next` link of a list page, or null on the last page. `filters` is
/// appended to the query as is (`&name=..`, see
/// [`crate::filters::ListFilter::query_suffix`]), so the next page keeps them.
pub fn next_url(headers: &HeaderMap, path: &str, filters: &str, offset: u64, size: u64, total: u64) -> Option<String> {
    (offset + size < total).then(|| {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        format!("http://{host}{path}?offset={}&size={size}{filters}", offset + size)
    })
}
