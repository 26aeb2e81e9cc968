//! Query strings and paging: `?offset=&limit=` on every list, with a default and a cap,
//! and nothing but the parameters a route names (a typo is a 400, not a silent no-op).

use std::collections::HashMap;

use crate::error::ApiError;

/// Items in a page when the client does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The most items a page holds, whatever the client asks.
pub const MAX_LIMIT: usize = 1000;

/// A route's query parameters, decoded, each at most once.
#[derive(Debug, Default)]
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    /// Decodes `raw` (the part after `?`), refusing parameters not in `allowed` and
    /// repeated ones.
    pub(crate) fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut out = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(ApiError::bad_request(if allowed.is_empty() {
                    format!("unknown query parameter {k:?}: this route takes none")
                } else {
                    format!(
                        "unknown query parameter {k:?} (expected {})",
                        allowed.join(", ")
                    )
                }));
            }
            if out.insert(k.to_string(), v.to_string()).is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter {k:?} given twice"
                )));
            }
        }
        Ok(Params(out))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `offset` and `limit`: defaults 0 and [`DEFAULT_LIMIT`], `limit` capped at
    /// [`MAX_LIMIT`].
    pub(crate) fn page(&self) -> Result<Page, ApiError> {
        let number = |name: &str, default: usize| -> Result<usize, ApiError> {
            match self.get(name) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "query parameter {name}={v:?}: expected a non-negative integer"
                    ))
                }),
            }
        };
        Ok(Page {
            offset: number("offset", 0)?,
            limit: number("limit", DEFAULT_LIMIT)?.min(MAX_LIMIT),
        })
    }
}

/// Which slice of a list to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub offset: usize,
    pub limit: usize,
}

impl Page {
    /// The page's items out of `items`, and how many there were in all.
    pub(crate) fn apply<T>(&self, items: Vec<T>) -> (usize, Vec<T>) {
        let total = items.len();
        let page = items
            .into_iter()
            .skip(self.offset)
            .take(self.limit)
            .collect();
        (total, page)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LIST: &[&str] = &["q", "offset", "limit"];

    fn page(raw: &str) -> Result<Page, ApiError> {
        Params::parse(Some(raw), LIST)?.page()
    }

    #[test]
    fn pages_have_defaults_and_a_cap() {
        assert_eq!(
            page("").unwrap(),
            Page {
                offset: 0,
                limit: DEFAULT_LIMIT
            }
        );
        assert_eq!(
            page("offset=5&limit=2").unwrap(),
            Page {
                offset: 5,
                limit: 2
            }
        );
        assert_eq!(page("limit=999999999").unwrap().limit, MAX_LIMIT);
        assert_eq!(page("limit=0").unwrap().limit, 0);
        let p = Page {
            offset: 3,
            limit: 4,
        };
        assert_eq!(p.apply((0..10).collect()), (10, vec![3, 4, 5, 6]));
        assert_eq!(p.apply((0..2).collect::<Vec<u8>>()), (2, vec![]));
        let far = Page {
            offset: usize::MAX,
            limit: MAX_LIMIT,
        };
        assert_eq!(far.apply(vec![1, 2]), (2, vec![]));
    }

    #[test]
    fn bad_parameters_are_400_naming_them() {
        for (raw, names) in [
            ("limit=-1", "limit"),
            ("offset=ten", "offset"),
            ("limit=1&limit=2", "limit"),
            ("lmit=3", "lmit"),
        ] {
            let e = page(raw).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(e.message.contains(names), "{raw}: {}", e.message);
        }
        let e = Params::parse(Some("x=1"), &[]).unwrap_err();
        assert!(e.message.contains("takes none"), "{}", e.message);
        // Percent-decoding: a multiaddr in a search.
        let p = Params::parse(Some("q=%2Fip4%2F127.0.0.1+x"), LIST).unwrap();
        assert_eq!(p.get("q"), Some("/ip4/127.0.0.1 x"));
    }
}
